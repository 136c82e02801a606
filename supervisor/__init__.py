"""sockherd's master process: config, sockets, signals, worker pools."""

__version__ = "0.1.0"
