// The `strata` command line.
import { readFileSync } from "node:fs";
import { Command, InvalidArgumentError } from "commander";
import { ConfigError, loadConfig } from "../config/load.ts";
import { createLogger, logProcessWarnings } from "../log.ts";
import { startServer } from "../server.ts";

const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as {
  version: string;
};

const program = new Command()
  .name("strata")
  .description("A versioned Postgres server built for replication")
  .version(pkg.version);

program
  .command("serve")
  .description("run the server in the foreground (ready when the listener accepts connections)")
  .option("-c, --config <file>", "config.yaml to read")
  .option("--data-dir <dir>", "data directory (overrides data_dir in the config)")
  .action(async (opts: { config?: string; dataDir?: string }) => {
    let loaded: ReturnType<typeof loadConfig>;
    try {
      loaded = loadConfig(opts.config, opts.dataDir);
    } catch (err) {
      if (err instanceof ConfigError) {
        process.stderr.write(`strata: ${err.message}\n`);
        process.exit(2);
      }
      throw err;
    }
    const log = createLogger(loaded.config.log_level);
    logProcessWarnings(log);
    for (const warning of loaded.warnings) log.warn(warning);
    let server: Awaited<ReturnType<typeof startServer>>;
    try {
      server = await startServer(loaded, log);
    } catch (err) {
      log.fatal({ err: (err as Error).message }, "strata could not start");
      process.exit(1);
    }
    let stopping = false;
    const shutdown = async (signal: string) => {
      if (stopping) return;
      stopping = true;
      log.info({ signal }, "shutting down");
      try {
        await server.stop();
        log.info("stopped");
        process.exit(0);
      } catch (err) {
        log.error({ err: (err as Error).message }, "error while shutting down");
        process.exit(1);
      }
    };
    process.on("SIGTERM", () => void shutdown("SIGTERM"));
    process.on("SIGINT", () => void shutdown("SIGINT"));
  });

/** Load the config for a one-shot command; a bad config exits 2 with its message. */
function loadForCommand(opts: { config?: string; dataDir?: string }) {
  try {
    return loadConfig(opts.config, opts.dataDir);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`strata: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
}

/**
 * Run a one-shot command: its errors are printed (with their remedy) and exit 1. An error from
 * the store carries its remedy as a hint (dolt.commit_seq's ways to name a commit), printed too.
 */
async function runCommand(work: () => Promise<void>): Promise<void> {
  try {
    await work();
  } catch (err) {
    const { message, hint } = err as Error & { hint?: string };
    process.stderr.write(`strata: ${message}\n${hint ? `hint: ${hint}\n` : ""}`);
    process.exit(1);
  }
}

program
  .command("setup-primary")
  .description(
    "install (or with --uninstall remove) on the primary the event trigger that sends DDL to Strata",
  )
  .option("-c, --config <file>", "config.yaml to read")
  .option("--uninstall", "remove the event trigger and its functions")
  .option("--print-sql", "print the SQL instead of running it (for a superuser to run)")
  .action(async (opts: { config?: string; uninstall?: boolean; printSql?: boolean }) => {
    const { config } = loadForCommand(opts);
    const { setupPrimary } = await import("./setup-primary.ts");
    await runCommand(() =>
      setupPrimary(config, { uninstall: Boolean(opts.uninstall), printSql: Boolean(opts.printSql) }),
    );
  });

program
  .command("drop-slot")
  .description("remove Strata's replication slot and publication from the primary")
  .option("-c, --config <file>", "config.yaml to read")
  .option(
    "--force",
    "terminate the walsender streaming from the slot (stops a running Strata's replication) instead of refusing",
  )
  .action(async (opts: { config?: string; force?: boolean }) => {
    const { config } = loadForCommand(opts);
    const { dropSlotCommand } = await import("./drop-slot.ts");
    await runCommand(() => dropSlotCommand(config, { force: Boolean(opts.force) }));
  });

program
  .command("sync-sequences")
  .description("copy the primary's sequence values to the replica now")
  .option("-c, --config <file>", "config.yaml to read")
  .option("--data-dir <dir>", "data directory (overrides data_dir in the config)")
  .action(async (opts: { config?: string; dataDir?: string }) => {
    const loaded = loadForCommand(opts);
    const { syncSequencesCommand } = await import("./sync-sequences.ts");
    await runCommand(() => syncSequencesCommand(loaded));
  });

function parseLimit(value: string): number {
  if (!/^\d+$/.test(value)) {
    throw new InvalidArgumentError("Give a whole number of commits (0 for all of them)");
  }
  return Number(value);
}

program
  .command("log")
  .description(
    "list the commits from REVISION (default HEAD) back, newest first; a table on a terminal, else JSON lines (one dolt_log row per line)",
  )
  .argument("[revision]", "where to start: HEAD, HEAD~N, a hash or unique prefix, a timestamp, or lsn:X/Y")
  .option("-c, --config <file>", "config.yaml to read")
  .option("--data-dir <dir>", "data directory (overrides data_dir in the config)")
  .option("-n, --limit <n>", "show at most N commits; 0 shows all", parseLimit, 50)
  .option("--json", "JSON lines even on a terminal")
  .action(
    async (
      revision: string | undefined,
      opts: { config?: string; dataDir?: string; limit: number; json?: boolean },
    ) => {
      const loaded = loadForCommand(opts);
      const { logCommand } = await import("./log.ts");
      const { stdoutOutput } = await import("./output.ts");
      await runCommand(() =>
        logCommand(loaded, { revision, limit: opts.limit }, stdoutOutput(Boolean(opts.json))),
      );
    },
  );

program
  .command("diff")
  .description(
    "what changed from commit FROM to commit TO: the tables changed with their row counts, or with TABLE that table's rows; text on a terminal, else JSON lines",
  )
  .argument("<from>", "the older commit (any name log takes)")
  .argument("<to>", "the newer commit")
  .argument("[table]", "a table (schema.table, or as search_path finds it) whose differing rows to show")
  .option("-c, --config <file>", "config.yaml to read")
  .option("--data-dir <dir>", "data directory (overrides data_dir in the config)")
  .option("--json", "JSON lines even on a terminal")
  .action(
    async (
      from: string,
      to: string,
      table: string | undefined,
      opts: { config?: string; dataDir?: string; json?: boolean },
    ) => {
      const loaded = loadForCommand(opts);
      const { diffCommand } = await import("./diff.ts");
      const { stdoutOutput } = await import("./output.ts");
      await runCommand(() => diffCommand(loaded, { from, to, table }, stdoutOutput(Boolean(opts.json))));
    },
  );

program
  .command("status")
  .description("replication status, uncommitted changes and HEAD; text on a terminal, else one JSON line")
  .option("-c, --config <file>", "config.yaml to read")
  .option("--data-dir <dir>", "data directory (overrides data_dir in the config)")
  .option("--json", "JSON even on a terminal")
  .action(async (opts: { config?: string; dataDir?: string; json?: boolean }) => {
    const loaded = loadForCommand(opts);
    const { statusCommand } = await import("./status.ts");
    const { stdoutOutput } = await import("./output.ts");
    await runCommand(() => statusCommand(loaded, stdoutOutput(Boolean(opts.json))));
  });

await program.parseAsync(process.argv);
