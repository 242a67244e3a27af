// Opening a `pg` connection. pg emits 'error' on a connection that ends unexpectedly, even during a
// query, and an 'error' event without a listener ends the Node process: every connection Strata
// opens gets a listener, so a dropped connection fails its query (and is retried by whoever owns
// it) instead of taking the server down.
import pg from "pg";

export async function connect(
  config: pg.ClientConfig,
  onError: (err: Error) => void = () => {},
): Promise<pg.Client> {
  const client = new pg.Client(config);
  client.on("error", onError);
  try {
    await client.connect();
  } catch (err) {
    await client.end().catch(() => {});
    throw err;
  }
  return client;
}
