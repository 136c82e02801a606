"""Benchmarks of issue #6: sockherd side by side with the stdlib servers and gunicorn.

    .venv/bin/pip install -e '.[dev,bench]' && .venv/bin/python -m tests.benchmarks

Needs wrk (`apt-get install wrk`). Takes about 10 minutes (`--quick`: under 1). Prints the
machine, a table of medians and ratios, and each speed target with PASS or FAIL, in Markdown.

Modules: run (the plan), contenders (starting and stopping the servers), measure (the
measurements), wrk (the load generator), report (tables and verdicts), machine (what it ran on);
baseline, wsgi and tagged are what the compared servers run. reloadcpu is a diagnostic of its
own (python -m tests.benchmarks.reloadcpu; root and bpftrace): who uses the CPUs after a SIGHUP.
No file here is named test_*, so pytest never collects the benchmark; tests/test_benchmarks.py
checks that it still works.
"""
