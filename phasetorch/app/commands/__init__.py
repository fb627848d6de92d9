"""The ``phasetorch`` subcommands, one module each.

Every module defines ``register(sub, common)``, which adds its subparser to the ``add_subparsers``
object ``sub`` (``common`` is the parent parser of ``--quiet/--debug/--threads``) with the module's
``run(args, echo) -> int`` as its handler. :data:`COMMANDS` lists them in the order of ``--help``.
``bench`` is special: everything after it goes to ``scripts/benchmark.py`` untouched, so
:func:`phasetorch.app.cli.main` calls :func:`phasetorch.app.commands.bench.run_bench` before parsing.
"""

from . import bench, demo, info, ptycho, reconstruct, simulate, sweep, theory, train

#: The subcommand modules, in the order ``phasetorch --help`` lists them.
COMMANDS = (demo, simulate, reconstruct, ptycho, train, theory, sweep, bench, info)

__all__ = ["COMMANDS", "bench", "demo", "info", "ptycho", "reconstruct", "simulate", "sweep", "theory", "train"]
