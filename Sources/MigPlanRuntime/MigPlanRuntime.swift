// MigPlanRuntime: exact command lines for runc, Docker and CRIU, and parsers of what they print.
//
// No I/O of its own and no SSH: builders return shell command lines (every plan value quoted with
// `ShellQuote`), parsers take `CommandOutput`, and `RuntimeClient` runs them through any
// `CommandRunner` (the SSH layer's connection, or a local runner in tests). See docs/runtimes.md.
