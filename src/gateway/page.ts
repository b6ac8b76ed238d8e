import { readFile } from "node:fs/promises";
import type { FastifyInstance } from "fastify";
import { documentHeaders } from "./protection.js";

const files = [
  { url: "/", file: "index.html", type: "text/html; charset=utf-8" },
  { url: "/chat.js", file: "chat.js", type: "text/javascript; charset=utf-8" },
  { url: "/chat.css", file: "chat.css", type: "text/css; charset=utf-8" },
  // Linked by the page, so that browsers do not ask for a /favicon.ico it would answer 404.
  { url: "/favicon.svg", file: "favicon.svg", type: "image/svg+xml" },
] as const;

/**
 * Serves the chat page (`GET /`) and its script and style from
 * `page/` beside this module (`npm run build` copies it beside the bundle's
 * chunks in dist/src/): plain files, read once at start-up, served as they are,
 * with helmet's document headers in place of the API answers' (the page's
 * Content-Security-Policy lets it load its own script and style and call the
 * gateway).
 */
export async function registerChatPage(app: FastifyInstance): Promise<void> {
  const headers = documentHeaders();
  for (const { url, file, type } of files) {
    const body = await readFile(new URL(`./page/${file}`, import.meta.url));
    app.get(url, async (_req, reply) =>
      reply.headers(headers).type(type).header("cache-control", "no-cache").send(body),
    );
  }
}
