r"""The application layer: the ``phasetorch`` command line, its jobs, the demo and the success-rate sweep.

==========================  ==========================================================================
module                      contents
==========================  ==========================================================================
:mod:`.jobs`                the jobs as functions (simulate, load, reconstruct, train, theory) and
                            their pieces (operators, noise, objects, supports); the algorithm lists,
                            all taken from :data:`phasetorch.optim.presets.PRESETS`
:mod:`.figures`             object displays (phase maps, PNGs) and matplotlib figures of logs and
                            predictions
:mod:`.common`              what every part shares: the user-facing errors, :class:`~.common.Echo`,
                            device resolution, number formatting
:mod:`.demo`                ``phasetorch demo`` and the theory-over-simulation grid of
                            ``scripts/compare_theory.py``
:mod:`.sweep`               resumable success-rate-vs-δ sweeps
:mod:`.cli`                 the ``phasetorch`` command: parser, error handling, dispatch
                            (console entry point ``phasetorch.app.cli:main``)
:mod:`.commands`            one module per subcommand (demo, simulate, reconstruct, train, theory,
                            sweep, bench) and the shared option types (:mod:`.commands.options`)
==========================  ==========================================================================

Imports go one way: common → figures → jobs → demo, sweep → commands → cli.
"""
