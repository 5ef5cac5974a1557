"""Runnable templates: `sgagent run recipes/<name>.py [--arg k=v ...]`, each an `async def main(engine, ...)`."""
