// initdb and postgres refuse to run as root. When Strata runs as root, the cluster runs as an
// unprivileged account instead: `store.os_user` if configured, else `postgres`, else `nobody`.
import { execFileSync } from "node:child_process";

export interface OsUser {
  name: string;
  uid: number;
  gid: number;
}

function lookup(name: string): OsUser | undefined {
  try {
    const uid = Number(
      execFileSync("id", ["-u", name], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }),
    );
    const gid = Number(
      execFileSync("id", ["-g", name], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }),
    );
    return { name, uid, gid };
  } catch {
    return undefined;
  }
}

/** The account the store processes run as, or undefined to run them as the current user. */
export function storeOsUser(configured?: string): OsUser | undefined {
  if (typeof process.getuid !== "function" || process.getuid() !== 0) {
    if (configured)
      throw new Error(
        `store.os_user is "${configured}" but Strata is not running as root, so it cannot switch users; remove store.os_user`,
      );
    return undefined;
  }
  if (configured) {
    const user = lookup(configured);
    if (!user)
      throw new Error(
        `store.os_user: no such operating-system user "${configured}"; create it or name an existing unprivileged user`,
      );
    if (user.uid === 0)
      throw new Error(
        `store.os_user: "${configured}" is root; PostgreSQL refuses to run as root, name an unprivileged user`,
      );
    return user;
  }
  const user = lookup("postgres") ?? lookup("nobody");
  if (!user) {
    throw new Error(
      "Strata runs as root and found neither a `postgres` nor a `nobody` user to run the store as; set store.os_user",
    );
  }
  return user;
}
