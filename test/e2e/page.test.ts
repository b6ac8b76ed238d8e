import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { chromiumMissing, launchChromium } from "../fixtures/browser.js";
import {
  freePort,
  type Stack,
  startChatmesh,
  startStack,
  waitForOutput,
} from "../fixtures/processes.js";

const artifacts = fileURLToPath(new URL("../artifacts/", import.meta.url));

let stack: Stack;
let browser: Browser;
let page: Page;

/**
 * The stack with `env`, Chromium and a page on the chat page, for the tests
 * of the describe it is called in; stopped after them.
 */
function openChatPage(
  env: () => Record<string, string>,
  viewport?: { readonly width: number; readonly height: number },
) {
  beforeAll(async () => {
    stack = await startStack(env());
    browser = await launchChromium();
    page = await browser.newPage(viewport === undefined ? {} : { viewport });
    await page.goto(stack.gatewayUrl);
  });
  afterAll(async () => {
    await browser?.close();
    await stack?.stopAll();
  });
}

describe.skipIf(chromiumMissing)("the chat page in Chromium", () => {
  openChatPage(() => ({ ECHO_CHUNK_DELAY_MS: "80" }), { width: 900, height: 760 });

  /** Types a message and sends it with Enter, as a user does. */
  async function send(text: string) {
    await page.locator("#text").fill(text);
    await page.locator("#text").press("Enter");
  }
  const errorText = () => page.locator("#error").textContent();
  const lastReply = () => page.locator(".msg.reply").last();

  /**
   * Waits until the reply in flight is complete and returns every text it
   * showed on the way (run in the page, so written as a string: the tests
   * are type-checked without the DOM library).
   */
  async function watchReply(): Promise<string[]> {
    return page.evaluate(`new Promise((resolve) => {
      const seen = [];
      const log = document.getElementById("log");
      // The reply to come, not one before it (the log's own attributes change
      // too), nor the history's earlier chats above this visit's.
      const before = log.querySelectorAll(":scope > .msg.reply").length;
      const observer = new MutationObserver(() => {
        const replies = log.querySelectorAll(":scope > .msg.reply");
        if (replies.length === before) return;
        const reply = replies[replies.length - 1];
        if (seen.at(-1) !== reply.textContent) seen.push(reply.textContent);
        if (!reply.classList.contains("streaming")) {
          observer.disconnect();
          resolve(seen);
        }
      });
      observer.observe(log, { subtree: true, childList: true, characterData: true, attributes: true });
    })`);
  }
  /** Waits until the error line shows `text`. */
  const errorShows = (text: string) =>
    page.locator("#error", { hasText: text }).waitFor({ state: "visible" });

  it("loads with no failed request and no console error", async () => {
    const tab = await browser.newPage();
    const failed: string[] = [];
    tab.on("response", (res) => {
      if (res.status() >= 400) failed.push(`${res.status()} ${res.url()}`);
    });
    tab.on("console", (message) => {
      if (message.type() === "error") failed.push(message.text());
    });
    await tab.goto(stack.gatewayUrl, { waitUntil: "networkidle" });
    await tab.close();
    expect(failed).toEqual([]);
  });

  it("streams the reply word by word and counts the quota down", async () => {
    await page.locator("#user").fill("browser");
    const reply = "Echo: Hello from a real browser, streamed word by word";
    const watching = watchReply();
    await send("Hello   from a real browser, streamed word by word");
    const seen = await watching;
    // The reply grew in visible steps before it was whole.
    const partial = seen.filter((t) => t !== "" && t !== reply);
    expect(partial.length).toBeGreaterThanOrEqual(3);
    for (const text of partial) expect(reply.startsWith(text)).toBe(true);
    expect(await lastReply().textContent()).toBe(reply);
    expect(await page.locator("#quota").textContent()).toBe("150");
    expect(await page.locator("#error").isHidden()).toBe(true);

    const second = watchReply();
    await send("and once more");
    await second;
    expect(await lastReply().textContent()).toBe("Echo: and once more");
    expect(await page.locator("#quota").textContent()).toBe("100");
  });

  it("shows the quota of the user id typed, before any chat of the page", async () => {
    await page.locator("#user").fill("browser-never-chatted");
    await expect.poll(() => page.locator("#quota").textContent()).toBe("200");
    await page.locator("#user").fill("browser");
    await expect.poll(() => page.locator("#quota").textContent()).toBe("100");
  });

  it("keeps the user id typed when the page is loaded again", async () => {
    await page.locator("#user").fill("browser");
    await page.reload();
    expect(await page.locator("#user").inputValue()).toBe("browser");
    await expect.poll(() => page.locator("#quota").textContent()).toBe("100");
  });

  it("keeps the keyboard's focus on the button, where Space stops the reply", async () => {
    await page.locator("#user").fill("browser-keys");
    await page.locator("#text").fill("k1 k2 k3 k4 k5 k6 k7 k8 k9 k10 k11 k12 k13 k14");
    await page.locator("#send").focus();
    const watching = watchReply();
    await page.keyboard.press("Enter");
    await page.locator("#send", { hasText: "Stop" }).waitFor();
    expect(await page.evaluate("document.activeElement.id")).toBe("send");
    await page.keyboard.press("Space");
    await watching;
    expect(await lastReply().textContent()).toMatch(/ \(stopped\)$/);
  });

  it("lets the reader scroll up while a reply streams, and keeps the form in view on a phone", async () => {
    await page.setViewportSize({ width: 375, height: 560 });
    try {
      await page.locator("#user").fill("browser-phone");
      // An error line takes room too.
      await send("   ");
      await errorShows("Please type a message first.");
      const box = await page.locator("#send").boundingBox();
      expect((box?.y ?? 0) + (box?.height ?? 0)).toBeLessThanOrEqual(560);

      const words = Array.from({ length: 40 }, (_, i) => `word-number-${i}`).join(" ");
      const watching = watchReply();
      await send(words);
      await page.locator(".msg.reply.streaming", { hasText: "word-number-1" }).waitFor();
      await page.evaluate("document.getElementById('log').scrollTop = 0");
      await page.waitForTimeout(600);
      // Pieces came meanwhile, and the log stayed where the reader put it.
      const log = (await page.evaluate(
        "(({ scrollTop, scrollHeight, clientHeight }) => ({ scrollTop, scrollHeight, clientHeight }))(document.getElementById('log'))",
      )) as { scrollTop: number; scrollHeight: number; clientHeight: number };
      expect(log.scrollHeight).toBeGreaterThan(log.clientHeight);
      expect(log.scrollTop).toBe(0);
      await watching;
      expect(await lastReply().textContent()).toBe(`Echo: ${words}`);
    } finally {
      await page.setViewportSize({ width: 900, height: 760 });
    }
  });

  it("keeps a streaming reply when Enter or Shift+Enter is pressed, and sends nothing more", async () => {
    await page.locator("#user").fill("browser-enter");
    const watching = watchReply();
    await send("a b c d e f g h");
    await page.locator("#send", { hasText: "Stop" }).waitFor();
    await page.locator("#text").fill("the next message");
    await page.locator("#text").press("Enter");
    await page.locator("#user").press("Enter");
    await page.locator("#user").press("Shift+Enter");
    await watching;
    expect(await lastReply().textContent()).toBe("Echo: a b c d e f g h");
    expect(await page.locator("#text").inputValue()).toBe("the next message");
    expect(await page.locator("#quota").textContent()).toBe("150");
  });

  it("shows the quota of a user id typed while a reply streamed, once it is over", async () => {
    await page.locator("#user").fill("browser-switch-a");
    await expect.poll(() => page.locator("#quota").textContent()).toBe("200");
    const watching = watchReply();
    await send("s1 s2 s3 s4 s5 s6 s7 s8 s9 s10 s11 s12 s13 s14 s15 s16 s17 s18 s19 s20");
    await page.locator("#send", { hasText: "Stop" }).waitFor();
    await page.locator("#user").fill("browser-switch-b");
    // The read of its quota comes while the reply streams, and waits for it.
    await page.waitForTimeout(600);
    await watching;
    await expect.poll(() => page.locator("#quota").textContent()).toBe("200");
  });

  it("leaves the focus in the field typed in while a reply streamed", async () => {
    await page.locator("#user").fill("browser-focus");
    const watching = watchReply();
    await send("f1 f2 f3 f4 f5 f6 f7 f8 f9 f10 f11 f12");
    await page.locator("#send", { hasText: "Stop" }).waitFor();
    await page.locator("#user").click();
    await page.keyboard.press("End");
    await page.keyboard.type("-b");
    await watching;
    await page.keyboard.type("2");
    expect(await page.locator("#user").inputValue()).toBe("browser-focus-b2");
    expect(await page.locator("#text").inputValue()).toBe("");
  });

  it("sends nothing on the Enter that ends an IME composition", async () => {
    await page.locator("#user").fill("browser-ime");
    await page.locator("#text").fill("にほんご");
    // As Safari sends it: the composition already ended, so isComposing is
    // false, and the key is the IME's (229).
    await page.evaluate(`document.getElementById("text").dispatchEvent(
      new KeyboardEvent("keydown", { key: "Enter", keyCode: 229, bubbles: true, cancelable: true }),
    )`);
    await page.waitForTimeout(300);
    expect(await page.locator("#text").inputValue()).toBe("にほんご");
    expect(await page.locator("#send").textContent()).toBe("Send");
    const quota = await fetch(`${stack.gatewayUrl}/quota?user_id=browser-ime`);
    expect(await quota.json()).toMatchObject({ used: 0 });
    await page.locator("#text").fill("");
  });

  it("lays out right-to-left text as such while it is typed, as in the log", async () => {
    const direction = (id: string) =>
      page.evaluate(`getComputedStyle(document.getElementById("${id}")).direction`);
    await page.locator("#text").fill("مرحبا بالعالم؟");
    expect(await direction("text")).toBe("rtl");
    await page.locator("#text").fill("hello");
    expect(await direction("text")).toBe("ltr");
    await page.locator("#user").fill("مستخدم");
    expect(await direction("user")).toBe("rtl");
    await page.locator("#text").fill("");
  });

  it("takes a user id of 256 code points typed in, as the gateway does, emoji included", async () => {
    const userId = "😀".repeat(256);
    await page.locator("#user").fill("");
    await page.locator("#user").focus();
    await page.keyboard.insertText(userId);
    expect(await page.locator("#user").inputValue()).toBe(userId);
    const watching = watchReply();
    await send("hi");
    await watching;
    expect(await lastReply().textContent()).toBe("Echo: hi");
    expect(await page.locator("#quota").textContent()).toBe("150");
    await page.locator("#user").fill("browser");
  });

  it("sends one message for a double click on Send", async () => {
    await page.locator("#user").fill("browser-double");
    await page.locator("#text").fill("clicked twice");
    const watching = watchReply();
    await page.locator("#send").dblclick();
    await watching;
    expect(await lastReply().textContent()).toBe("Echo: clicked twice");
    const quota = await fetch(`${stack.gatewayUrl}/quota?user_id=browser-double`);
    expect(await quota.json()).toMatchObject({ used: 50 });
    // Back to the user the next tests count down.
    await page.locator("#user").fill("browser");
  });

  it("does not show a quota read that a chat answered meanwhile made stale", async () => {
    // The answer to a read of the quota is slow to arrive (a loaded network): held 2 s.
    const quotaRead = (url: URL) => url.pathname === "/quota";
    await page.route(quotaRead, async (route) => {
      const response = await route.fetch();
      await new Promise((resolve) => setTimeout(resolve, 2_000));
      await route.fulfill({ response });
    });
    try {
      await page.locator("#user").fill("browser-stale");
      // The read starts once the id stopped changing (400 ms), then a chat goes.
      await page.waitForTimeout(500);
      const watching = watchReply();
      await send("answered meanwhile");
      await watching;
      expect(await page.locator("#quota").textContent()).toBe("150");
      // The read answers (200, as before the chat) after the chat's answer.
      await page.waitForTimeout(2_000);
      expect(await page.locator("#quota").textContent()).toBe("150");
    } finally {
      await page.unroute(quotaRead);
    }
    await page.locator("#user").fill("browser");
  });

  it("says when a message is blocked, blank or too long, charging nothing", async () => {
    await send("this has foo inside");
    await errorShows("blocked");
    expect(await errorText()).toBe(
      "Your message was blocked by the content filter. Please rephrase it.",
    );

    await page.locator("#text").fill("   ");
    await page.locator("#send").click();
    await errorShows("type a message");

    await send("x".repeat(8001));
    await errorShows("too long");
    expect(await errorText()).toBe("Your message is too long. Please shorten it.");

    const next = watchReply();
    await send("still counted right");
    await next;
    expect(await page.locator("#quota").textContent()).toBe("50");
    expect(await page.locator("#error").isHidden()).toBe(true);
  });

  it("says when the quota is exceeded", async () => {
    const last = watchReply();
    await send("the last one today");
    await last;
    expect(await page.locator("#quota").textContent()).toBe("0");

    // As a page opened elsewhere, that does not know it yet.
    await page.evaluate(`document.getElementById("quota").textContent = "—"`);
    await send("one too many");
    await errorShows("Quota exceeded");
    // The refusal has the page read the quota again.
    await expect.poll(() => page.locator("#quota").textContent()).toBe("0");
    expect(await errorText()).toBe(
      "Quota exceeded: you have used today's quota. It resets at midnight UTC.",
    );
    await mkdir(artifacts, { recursive: true });
    await page.screenshot({ path: `${artifacts}chat-page.png`, fullPage: true });
  });

  it("says when the gateway is lost mid-reply, marking the reply as cut off", async () => {
    await page.locator("#user").fill("browser-cut");
    const words = Array.from({ length: 40 }, (_, i) => `w${i}`).join(" ");
    const cut = watchReply();
    await send(words);
    await page.locator(".msg.reply.streaming", { hasText: "w1" }).waitFor();
    await stack.procs.get("gateway")?.stop("SIGKILL");
    await cut;
    await errorShows("lost while the reply streamed");
    expect(await lastReply().getAttribute("class")).toContain("failed");
    await stack.start("gateway");
  });

  it("says when the model fails, showing the quota given back", async () => {
    await page.locator("#user").fill("browser-3");
    const first = watchReply();
    await send("first");
    await first;
    expect(await page.locator("#quota").textContent()).toBe("150");

    // Mid-reply: the words so far stay, the quota shown is the one before it.
    const words = Array.from({ length: 40 }, (_, i) => `w${i}`).join(" ");
    const failing = watchReply();
    await send(words);
    await page.locator(".msg.reply.streaming", { hasText: "w1" }).waitFor();
    await stack.procs.get("llm")?.stop("SIGKILL");
    await failing;
    await errorShows("failed while answering");
    expect(await page.locator("#quota").textContent()).toBe("150");

    // Before its first word (the model server is down): nothing was sent, the text stays.
    await send("will the model answer?");
    await errorShows("failed to answer");
    expect(await errorText()).toBe(
      "The model failed to answer; your quota for this message was given back. Please try again.",
    );
    expect(await page.locator("#text").inputValue()).toBe("will the model answer?");
    const quota = await fetch(`${stack.gatewayUrl}/quota?user_id=browser-3`);
    expect(await quota.json()).toMatchObject({ used: 50 });
  });

  it("says when a service fails", async () => {
    await stack.procs.get("filter")?.stop("SIGKILL");
    await page.locator("#user").fill("browser-2");
    await send("is anyone there?");
    await errorShows("filter failed");
    expect(await errorText()).toBe(
      "Something went wrong on our side (filter failed). Please try again.",
    );
    await page.screenshot({ path: `${artifacts}chat-page-error.png`, fullPage: true });
  });
});

describe.skipIf(chromiumMissing)("the chat page with a fast model", () => {
  // Every piece as soon as it is made: many pieces, and many lines, a frame.
  openChatPage(() => ({ ECHO_CHUNK_DELAY_MS: "0" }), { width: 375, height: 560 });

  it("follows a reply that grows by lines between two frames to its end", async () => {
    const words = Array.from({ length: 900 }, (_, i) => `w${i}`).join(" ");
    await page.locator("#text").fill(words);
    await page.locator("#text").press("Enter");
    await page.locator(".msg.reply:not(.streaming)", { hasText: "w899" }).waitFor();
    // The frame after the reply's end has scrolled, if the log still follows.
    await page.waitForTimeout(200);
    const gap = await page.evaluate(
      "(({ scrollTop, scrollHeight, clientHeight }) => scrollHeight - scrollTop - clientHeight)(document.getElementById('log'))",
    );
    expect(gap).toBeLessThan(2);
  });
});

describe.skipIf(chromiumMissing)("the chat page's history", () => {
  openChatPage(() => ({ QUOTA_LIMIT: "100000" }));

  /** A chat of `user` made elsewhere (another tab, a script). */
  const chatElsewhere = async (user: string, text: string) => {
    const res = await fetch(`${stack.gatewayUrl}/chat`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user_id: user, text }),
    });
    expect(res.status).toBe(200);
  };
  const said = () => page.locator(".msg.mine").allTextContents();
  const past = Array.from({ length: 23 }, (_, i) => (i === 22 ? "<b>m22</b>" : `m${i}`));

  it("shows the user's earlier chats on load, older ones at a click, HTML as text", async () => {
    for (const text of past) await chatElsewhere("past", text);
    await page.locator("#user").fill("past");
    await page.reload();
    await expect.poll(said).toEqual(past.slice(3));
    expect(await page.locator(".msg.reply").last().textContent()).toBe("Echo: <b>m22</b>");
    expect(await page.locator(".msg b").count()).toBe(0);
    await page.locator("button", { hasText: "Show earlier messages" }).click();
    await expect.poll(said).toEqual(past);
    expect(await page.locator("button", { hasText: "earlier" }).isHidden()).toBe(true);
  });

  it("says when they cannot be loaded, chats all the same, and shows them at a click", async () => {
    await stack.procs.get("history")?.stop("SIGKILL");
    await page.reload();
    const retry = page.locator("button", { hasText: "could not be loaded" });
    await retry.waitFor();
    await page.locator("#text").fill("while the history is down");
    await page.locator("#text").press("Enter");
    await page.locator(".msg.reply:not(.streaming)", { hasText: "history is down" }).waitFor();
    await stack.start("history");
    await expect
      .poll(async () => {
        const res = await fetch(`${stack.gatewayUrl}/history?user_id=past&page_size=1`);
        return res.ok ? ((await res.json()) as { items: { text: string }[] }).items[0]?.text : "";
      })
      .toBe("while the history is down");
    await retry.click();
    // This visit's chat, kept by the history meanwhile, is shown once, below the earlier ones.
    await expect.poll(said).toEqual([...past.slice(4), "while the history is down"]);
    expect(await page.locator("button", { hasText: "Show earlier messages" }).isVisible()).toBe(
      true,
    );
  });

  it("shows another user's earlier chats instead once another user id is typed, this visit's once", async () => {
    await chatElsewhere("other", "other's first");
    await page.locator("#user").fill("other");
    await page.reload();
    await expect.poll(said).toEqual(["other's first"]);
    await page.locator("#text").fill("other's second");
    await page.locator("#text").press("Enter");
    await page.locator(".msg.reply:not(.streaming)", { hasText: "other's second" }).waitFor();
    // Twice: each time this user's history is shown again, as the first time.
    for (let round = 0; round < 2; round++) {
      await page.locator("#user").fill("past");
      // The other user's earlier chat goes; past's newest come above this visit's chat.
      await expect
        .poll(said)
        .toEqual([...past.slice(4), "while the history is down", "other's second"]);
      await page.locator("#user").fill("other");
      // Back to the other user: this visit's chat is shown once, not again in the history above it.
      await expect.poll(said).toEqual(["other's first", "other's second"]);
    }
  });
});

describe.skipIf(chromiumMissing)("the chat page with chats priced by tokens", () => {
  openChatPage(() => ({ QUOTA_COST_MODE: "tokens", ECHO_CHUNK_DELAY_MS: "80" }));

  it("shows the quota a stopped reply was settled to, not its reservation", async () => {
    await page.locator("#user").fill("browser-tokens");
    await expect.poll(() => page.locator("#quota").textContent()).toBe("200");
    await page.locator("#text").fill(Array.from({ length: 40 }, (_, i) => `t${i}`).join(" "));
    await page.locator("#text").press("Enter");
    await page.locator(".msg.reply.streaming", { hasText: "t1" }).waitFor();
    const reserved = await page.locator("#quota").textContent();
    await page.locator("#send").click();
    await page.locator(".msg.reply:not(.streaming)", { hasText: "(stopped)" }).waitFor();
    const remaining = async () => {
      const res = await fetch(`${stack.gatewayUrl}/quota?user_id=browser-tokens`);
      return String(((await res.json()) as { remaining: number }).remaining);
    };
    // The gateway settles the charge once it sees the connection gone.
    await expect.poll(remaining).not.toBe(reserved);
    await expect.poll(() => page.locator("#quota").textContent()).toBe(await remaining());
  });
});

describe.skipIf(chromiumMissing)("the chat page with a rate limit", () => {
  // The page's reads of the quota and the history at load, and one chat; the next chat is refused.
  openChatPage(() => ({ RATE_LIMIT_PER_MINUTE: "3" }));

  it("says when to send again, from Retry-After", async () => {
    await page.locator("#text").fill("within the limit");
    await page.locator("#text").press("Enter");
    await page.locator(".msg.reply:not(.streaming)", { hasText: "within the limit" }).waitFor();
    await page.locator("#text").fill("over the limit");
    await page.locator("#text").press("Enter");
    await page.locator("#error", { hasText: "Too many requests" }).waitFor({ state: "visible" });
    expect(await page.locator("#error").textContent()).toMatch(
      /^Too many requests\. Please try again in ([2-9]|[1-6]\d) seconds\.$/,
    );
    expect(await page.locator("#text").inputValue()).toBe("over the limit");
  });
});

describe.skipIf(chromiumMissing)("the chat page with API keys", () => {
  const key = "page-test-key-0123456789";
  let keys: string;
  beforeAll(() => {
    keys = mkdtempSync(join(tmpdir(), "chatmesh-keys-"));
    writeFileSync(join(keys, "keys"), `${key} alice\n`);
  });
  afterAll(() => rmSync(keys, { recursive: true, force: true }));
  openChatPage(() => ({ API_KEYS_FILE: join(keys, "keys") }));

  it("asks for a key on 401 and chats with it", async () => {
    // At once: the page's read of the quota was refused.
    await page.locator("#key").waitFor({ state: "visible" });
    await page.locator("#user").fill("alice");
    await page.locator("#text").fill("hello with a key");
    await page.locator("#text").press("Enter");
    await page.locator("#error", { hasText: "API key" }).waitFor({ state: "visible" });
    expect(await page.locator("#error").textContent()).toBe(
      "This gateway needs an API key: enter yours above and send again.",
    );
    expect(await page.locator("#key").isVisible()).toBe(true);

    await page.locator("#key").fill("ключ-ключ-ключ-ключ");
    await page.locator("#key").press("Enter");
    await page.locator("#error", { hasText: "printable ASCII" }).waitFor({ state: "visible" });
    expect(await page.locator("#error").textContent()).toBe(
      "An API key has printable ASCII characters only: check the key typed in.",
    );
    expect(await page.evaluate("document.activeElement.id")).toBe("key");

    await page.locator("#key").fill("not-the-key-at-all-000");
    await page.locator("#key").press("Enter");
    await page.locator("#error", { hasText: "not accepted" }).waitFor({ state: "visible" });

    await page.locator("#key").fill(key);
    await page.locator("#user").fill("bob");
    await page.locator("#key").press("Enter");
    await page.locator("#error", { hasText: "another user id" }).waitFor({ state: "visible" });

    await page.locator("#user").fill("alice");
    await page.locator("#text").press("Enter");
    await page
      .locator(".msg.reply:not(.streaming)", { hasText: "Echo: hello with a key" })
      .waitFor();
    expect(await page.locator("#quota").textContent()).toBe("150");
    expect(await page.locator("#error").isHidden()).toBe(true);
  });

  it("shows the key's user's earlier chats once a chat with the key is answered", async () => {
    const res = await fetch(`${stack.gatewayUrl}/chat`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
      body: JSON.stringify({ user_id: "alice", text: "said elsewhere" }),
    });
    expect(res.status).toBe(200);
    const tab = await browser.newPage();
    try {
      await tab.goto(stack.gatewayUrl);
      await tab.locator("#key").waitFor({ state: "visible" });
      await tab.locator("#user").fill("alice");
      await tab.locator("#text").fill("and from this tab");
      await tab.locator("#key").fill(key);
      await tab.locator("#key").press("Enter");
      await tab.locator(".msg.reply:not(.streaming)", { hasText: "from this tab" }).waitFor();
      await expect
        .poll(() => tab.locator(".msg.mine").allTextContents())
        .toEqual(["hello with a key", "said elsewhere", "and from this tab"]);
    } finally {
      await tab.close();
    }
  });
});

describe.skipIf(chromiumMissing)("the chat page under run-all", () => {
  it("streams a reply in Chromium with run-all's defaults", async () => {
    const ports = await Promise.all([freePort(), freePort(), freePort(), freePort(), freePort()]);
    const [token, filter, llm, history, gateway] = ports;
    // Every port moved, so that another test's run-all cannot collide with this one.
    const run = startChatmesh(["run-all"], {
      TOKEN_PORT: String(token),
      FILTER_PORT: String(filter),
      LLM_PORT: String(llm),
      HISTORY_PORT: String(history),
      GATEWAY_PORT: String(gateway),
    });
    let own: Browser | undefined;
    try {
      // Inside the try: a browser that fails to start must not leave run-all running.
      own = await launchChromium();
      await waitForOutput(run, /chatmesh is up/);
      expect(run.output()).toContain(`chat     http://127.0.0.1:${gateway}/`);
      const tab = await own.newPage();
      await tab.goto(`http://127.0.0.1:${gateway}/`);
      // Not one of another run's, which run-all's history (./data) shows.
      const text = `hello from run-all ${Date.now()}`;
      await tab.locator("#text").fill(text);
      await tab.locator("#send").click();
      await tab.locator(".msg.reply:not(.streaming)", { hasText: `Echo: ${text}` }).waitFor();
      expect(await tab.locator("#quota").textContent()).toBe("150");
    } finally {
      await own?.close();
      run.child.kill("SIGINT");
      await run.exited;
    }
  });
});
