// Reads and validates config.yaml. Errors name the key, the value found and the expected form;
// unknown keys are warnings (a typo must not go unnoticed, but must not stop a server either).
import { readFileSync } from "node:fs";
import { isAbsolute, resolve } from "node:path";
import { parse } from "yaml";
import { z } from "zod";
import { type Config, configSchema } from "./schema.ts";

export class ConfigError extends Error {
  override name = "ConfigError";
}

export interface LoadedConfig {
  config: Config;
  warnings: string[];
  /** Absolute data directory. */
  dataDir: string;
}

function describe(value: unknown): string {
  if (value === undefined) return "nothing (the key is missing)";
  const text = JSON.stringify(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

function valueAt(root: unknown, path: PropertyKey[]): unknown {
  let node = root;
  for (const key of path) {
    if (node === null || typeof node !== "object") return undefined;
    node = (node as Record<PropertyKey, unknown>)[key];
  }
  return node;
}

function objectShape(schema: z.ZodType): Record<string, z.ZodType> | undefined {
  let s: z.ZodType = schema;
  // Unwrap optional/default/prefault wrappers down to the object, if there is one.
  for (let i = 0; i < 5; i++) {
    if (s instanceof z.ZodObject) return s.shape as Record<string, z.ZodType>;
    // innerType: optional/default/prefault; in: a transform's input (cluster:).
    const def = (s as unknown as { def?: { innerType?: z.ZodType; in?: z.ZodType } }).def;
    const inner = def?.innerType ?? def?.in;
    if (!inner) return undefined;
    s = inner;
  }
  return undefined;
}

function unknownKeys(schema: z.ZodType, value: unknown, prefix: string, out: string[]) {
  const shape = objectShape(schema);
  if (!shape || value === null || typeof value !== "object" || Array.isArray(value)) return;
  for (const [key, child] of Object.entries(value)) {
    const path = prefix ? `${prefix}.${key}` : key;
    if (!(key in shape)) out.push(path);
    else if (key !== "settings") unknownKeys(shape[key], child, path, out);
  }
}

export function validateConfig(raw: unknown, source: string): { config: Config; warnings: string[] } {
  const input = raw ?? {};
  if (typeof input !== "object" || Array.isArray(input)) {
    throw new ConfigError(
      `${source}: the file must hold a YAML mapping of keys (listener:, data_dir:, ...), got ${describe(raw)}`,
    );
  }
  const result = configSchema.safeParse(input);
  if (!result.success) {
    const lines = result.error.issues.map((issue) => {
      const key = issue.path.join(".");
      return `  ${key}: ${issue.message}; got ${describe(valueAt(input, issue.path))}`;
    });
    throw new ConfigError(`${source} is not valid:\n${lines.join("\n")}`);
  }
  const unknown: string[] = [];
  unknownKeys(configSchema, input, "", unknown);
  const warnings = unknown.map(
    (key) =>
      `${source}: unknown key "${key}" is ignored (check its spelling against the configuration reference in the README)`,
  );
  return { config: result.data, warnings };
}

export function loadConfig(file: string | undefined, dataDirOverride?: string): LoadedConfig {
  let raw: unknown = {};
  let source = "(defaults)";
  if (file) {
    source = file;
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch (err) {
      throw new ConfigError(
        `cannot read the config file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}; pass an existing file with --config`,
      );
    }
    try {
      raw = parse(text);
    } catch (err) {
      throw new ConfigError(`${file} is not valid YAML: ${(err as Error).message}`);
    }
  }
  const { config, warnings } = validateConfig(raw, source);
  const dir = dataDirOverride ?? config.data_dir;
  return { config, warnings, dataDir: isAbsolute(dir) ? dir : resolve(process.cwd(), dir) };
}
