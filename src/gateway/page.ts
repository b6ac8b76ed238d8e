import { readFile } from "node:fs/promises";
import type { FastifyInstance } from "fastify";

const files = [
  { url: "/", file: "index.html", type: "text/html; charset=utf-8" },
  { url: "/chat.js", file: "chat.js", type: "text/javascript; charset=utf-8" },
  { url: "/chat.css", file: "chat.css", type: "text/css; charset=utf-8" },
] as const;

/**
 * Serves the chat page (`GET /`) and its script and style from
 * `page/` beside this module (`npm run build` copies it beside the bundle's
 * chunks in dist/src/): plain files, read once at start-up, served as they are.
 */
export async function registerChatPage(app: FastifyInstance): Promise<void> {
  for (const { url, file, type } of files) {
    const body = await readFile(new URL(`./page/${file}`, import.meta.url));
    app.get(url, async (_req, reply) =>
      reply.type(type).header("cache-control", "no-cache").send(body),
    );
  }
}
