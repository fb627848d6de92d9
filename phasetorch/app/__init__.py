"""The application layer: the ``phasetorch`` command line, its jobs, the demo and the success-rate sweep."""
