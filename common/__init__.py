"""What every layer shares: the one-line user errors and the argparse pieces of every script.

Nothing here imports ``datasets``, ``models`` or ``training``: all three build on it.
"""
