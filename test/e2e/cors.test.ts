import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { chromiumMissing, launchChromium } from "../fixtures/browser.js";
import { freePort, type Stack, startStack } from "../fixtures/processes.js";

const key = "cors-test-key-0123456789";
const sdkKey = "cors-test-sdk-key-0123456789";

/** Where the page's server finds the OpenAI SDK's ES modules it serves under /openai/. */
const openAiSdk = fileURLToPath(new URL("../../node_modules/openai/", import.meta.url));

/**
 * A server of one empty page, at its own origin, and of the OpenAI SDK's
 * modules (a page imports them as an app's bundle would hold them); its URL.
 */
async function servePage(server: http.Server, port: number): Promise<string> {
  server.on("request", (req, res) => {
    const module = /^\/openai\/([\w/.-]+\.mjs)$/.exec(req.url ?? "")?.[1];
    if (module !== undefined && !module.includes("..")) {
      readFile(join(openAiSdk, module)).then(
        (code) => res.writeHead(200, { "content-type": "text/javascript" }).end(code),
        () => res.writeHead(404).end(),
      );
      return;
    }
    res.writeHead(200, { "content-type": "text/html" }).end("<!doctype html><title>app</title>");
  });
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/**
 * What a page's script gets from a chat completion with the key, and from a
 * streamed chat read to its end (run in the page: written as a string, the
 * tests being type-checked without the DOM library).
 */
const callGateway = (page: Page, gatewayUrl: string) =>
  page.evaluate(`(async () => {
    const headers = { authorization: "Bearer ${key}", "content-type": "application/json" };
    try {
      const completion = await fetch("${gatewayUrl}/v1/chat/completions", {
        method: "POST",
        headers,
        body: JSON.stringify({ model: "echo", messages: [{ role: "user", content: "hi from afar" }] }),
      });
      const body = await completion.json();
      const stream = await fetch("${gatewayUrl}/chat/stream", {
        method: "POST",
        headers,
        body: JSON.stringify({ user_id: "alice", text: "streamed from afar" }),
      });
      return {
        status: completion.status,
        content: body.choices[0].message.content,
        requestId: completion.headers.get("x-request-id"),
        remaining: completion.headers.get("ratelimit-remaining"),
        events: (await stream.text()).match(/^event: \\w+/gm),
      };
    } catch (err) {
      return { failed: String(err) };
    }
  })()`);

describe.skipIf(chromiumMissing)("a page of another origin in Chromium", () => {
  const listed = http.createServer();
  const unlisted = http.createServer();
  let keys: string;
  let stack: Stack;
  let browser: Browser;
  let listedUrl: string;
  let unlistedUrl: string;
  beforeAll(async () => {
    listedUrl = await servePage(listed, await freePort());
    unlistedUrl = await servePage(unlisted, 0);
    keys = mkdtempSync(join(tmpdir(), "chatmesh-keys-"));
    writeFileSync(join(keys, "keys"), `${key} alice\n${sdkKey} bob\n`);
    stack = await startStack({ API_KEYS_FILE: join(keys, "keys"), CORS_ORIGINS: listedUrl });
    browser = await launchChromium();
  });
  afterAll(async () => {
    await browser?.close();
    await stack?.stopAll();
    listed.close();
    unlisted.close();
    rmSync(keys, { recursive: true, force: true });
  });

  it("calls the gateway with a key, and reads the answer, its headers and a stream, from a listed origin", async () => {
    const page = await browser.newPage();
    await page.goto(listedUrl);
    expect(await callGateway(page, stack.gatewayUrl)).toEqual({
      status: 200,
      content: "Echo: hi from afar",
      requestId: expect.stringMatching(/^[0-9a-f-]{36}$/),
      remaining: "150",
      events: [
        "event: meta",
        "event: delta",
        "event: delta",
        "event: delta",
        "event: delta",
        "event: done",
      ],
    });
  });

  it("serves the OpenAI SDK in a page of a listed origin: a spent quota fails at once, not retried", async () => {
    const page = await browser.newPage();
    await page.goto(listedUrl);
    const seen = await page.evaluate(`(async () => {
      const { default: OpenAI } = await import("/openai/index.mjs");
      let requests = 0;
      const client = new OpenAI({
        apiKey: "${sdkKey}",
        baseURL: "${stack.gatewayUrl}/v1",
        dangerouslyAllowBrowser: true,
        fetch: (...args) => (requests++, fetch(...args)),
      });
      const ask = { model: "echo", messages: [{ role: "user", content: "hi" }] };
      const replies = [];
      for (let i = 0; i < 4; i++) {
        replies.push((await client.chat.completions.create(ask)).choices[0].message.content);
      }
      const before = requests;
      const refused = await client.chat.completions.create(ask).catch((err) => err);
      return { replies, status: refused.status, requests: requests - before };
    })()`);
    expect(seen).toEqual({ replies: Array(4).fill("Echo: hi"), status: 429, requests: 1 });
  });

  it("reads a refusal made before routing: request headers too large", async () => {
    const page = await browser.newPage();
    await page.goto(listedUrl);
    const refused = await page.evaluate(`(async () => {
      const answer = await fetch("${stack.gatewayUrl}/quota", {
        headers: { authorization: "Bearer ${key}", "x-big": "y".repeat(20000) },
      });
      return { status: answer.status, body: await answer.json() };
    })()`);
    expect(refused).toEqual({ status: 431, body: { error: "request headers too large" } });
  });

  it("is kept out by the browser from an origin not listed", async () => {
    const page = await browser.newPage();
    await page.goto(unlistedUrl);
    expect(await callGateway(page, stack.gatewayUrl)).toEqual({
      failed: "TypeError: Failed to fetch",
    });
  });
});
