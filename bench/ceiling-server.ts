import { fastify } from "fastify";

/**
 * The ceiling of one HTTP hop: bare Fastify parsing the same JSON body as
 * POST /chat and answering a fixed JSON of the same shape.
 */
const app = fastify({ logger: false });
const answer = {
  cleaned: "Hello world from Go!",
  reply: "Echo: Hello world from Go!",
  remaining: 150,
};
app.post("/chat", async (req) => {
  const body = req.body as { user_id?: unknown };
  if (typeof body?.user_id !== "string") throw new Error("bad body");
  return answer;
});
await app.listen({ host: "127.0.0.1", port: Number(process.env.PORT ?? 0) });
process.send?.({ port: (app.server.address() as { port: number }).port });
process.on("SIGTERM", () => app.close().then(() => process.exit(0)));
