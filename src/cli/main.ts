// The `strata` command line.
import { readFileSync } from "node:fs";
import { Command } from "commander";
import { ConfigError, loadConfig } from "../config/load.ts";
import { createLogger } from "../log.ts";
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

await program.parseAsync(process.argv);
