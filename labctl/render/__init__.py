"""Renderings of a lab for other platforms than a Docker engine (pure: topology in, objects out).

- :mod:`~labctl.render.k8s`: Kubernetes with Multus (``labctl render k8s``).
"""
