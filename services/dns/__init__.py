"""The lab's authoritative DNS server: zones (loading), answer (the pure core), server (asyncio)."""
