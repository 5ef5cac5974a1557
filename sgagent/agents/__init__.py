"""Agents as actors: mailboxes, send/ask by address, supervision, all on one shared engine."""

from .agent import Agent, Envelope
from .policy import Escalate, Restart, Stop
from .runtime import AgentRuntime

__all__ = ["Agent", "AgentRuntime", "Envelope", "Escalate", "Restart", "Stop"]
