"""The example backend the launcher starts: a gateway over PostgreSQL and Redis, and an agent."""
