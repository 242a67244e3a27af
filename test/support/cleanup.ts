// Synchronous clean-up that runs however the test process ends: normal exit, an uncaught error,
// or SIGINT/SIGTERM (on which Node would otherwise skip 'exit' handlers).
const tasks = new Set<() => void>();
let installed = false;

// Last registered first, like nested clean-ups: a cluster (registered after its temp directory)
// is stopped before the directory goes, or pg_ctl would no longer find it and leave it running.
function runAll() {
  for (const task of [...tasks].reverse()) {
    tasks.delete(task);
    try {
      task();
    } catch {
      // best effort: keep cleaning the rest
    }
  }
}

/** Register `task`; returns a function that unregisters it. */
export function onProcessExit(task: () => void): () => void {
  if (!installed) {
    installed = true;
    process.on("exit", runAll);
    for (const signal of ["SIGINT", "SIGTERM"] as const) {
      process.once(signal, () => {
        runAll();
        process.exit(128 + (signal === "SIGINT" ? 2 : 15));
      });
    }
  }
  tasks.add(task);
  return () => tasks.delete(task);
}
