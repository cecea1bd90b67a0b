"""bench.request_cost's CPU by thread: Python threads by their Python names, the others as native."""

from __future__ import annotations

from bench.request_cost import cpu_by_thread, parse_thread_names

DUMP = '''Process 18164: /work/main/.venv/bin/python -m inference_platform.serve
Python v3.11.7 (/root/.pyenv/versions/3.11.7/bin/python3.11)

Thread 18164 (idle): "MainThread"
    run (granian/server/mp.py:317)
Thread 18183 (idle): "batcher:iris:v1@cpu"
    wait (threading.py:320)
Thread 18195 (idle): "io_0"
    _worker (concurrent/futures/thread.py:81)
Thread 18196 (active): "io_1"
    _worker (concurrent/futures/thread.py:81)
'''


def test_thread_names_are_read_from_a_py_spy_dump():
    assert parse_thread_names(DUMP) == {18164: "MainThread", 18183: "batcher:iris:v1@cpu", 18195: "io_0",
                                        18196: "io_1"}


def test_cpu_by_thread_adds_up_python_threads_by_name_and_marks_the_others_native():
    names = parse_thread_names(DUMP)
    before = {18164: ("python", 1.0), 18183: ("python", 0.5), 18195: ("python", 0.0), 18196: ("python", 0.1),
              18187: ("python", 2.0)}
    after = {18164: ("python", 3.0), 18183: ("python", 0.75), 18195: ("python", 0.25), 18196: ("python", 0.35),
             18187: ("python", 2.5), 18300: ("python", 0.125)}  # 18300: a thread started meanwhile
    assert cpu_by_thread(before, after, names) == {
        "MainThread": 2.0, "batcher:iris:vN@cpu": 0.25, "io_N": 0.5, "python (native)": 0.625}
