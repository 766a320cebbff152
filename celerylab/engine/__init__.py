"""The engine: real brokers, isolated namespaces, worker and beat processes, and what they did.

Nothing here knows about labs, grades or learners; grading and study are built on it.
"""
