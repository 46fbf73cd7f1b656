"""Scenarios: scripted labs with faults, expectations and reports (``labctl run``, scenarios/README.md).

model.py (what a file says), parse.py (YAML to model, file:line errors), runner.py (a fresh lab per
scenario, step by step), steps.py (send, fetch, dialogues, wait, expect), faults.py (breaking the
lab), facts.py (what the capture shows), junit.py (the report for CI and graders).
"""
