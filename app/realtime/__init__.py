"""Real-time delivery: events, the bus that carries them between replicas, alerts."""
