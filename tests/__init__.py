"""pytest suites, CPU-only by default: `gpu` tests skip without CUDA, `slow` marks the tests
that start Ray or run studies end to end (`-m "not slow"` leaves them out)."""
