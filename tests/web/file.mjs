// Opens the wschat page from a file (file://…/page.html#ws://127.0.0.1:PORT/) in headless
// Chromium, as someone who saved the page would, and chats through a server started with
// `--allow-origin null`. Started by tests/web.rs. Lines on stdout:
//   FILE_CONNECTED  -> the page is connected; it then says "hello from a file", and waits
//                      for "hello, file page" from a `wschat join` the Rust side runs
//   FILE_OK         -> every check passed
// Exits non-zero on the first failed check.
import assert from "node:assert/strict";
import { giveUpAfter, launchBrowser, log } from "./harness.mjs";

const FILE_URL = process.env.WSCHAT_FILE_URL;
const OVERALL_MS = 45_000;
if (!FILE_URL) throw new Error("WSCHAT_FILE_URL is not set (run this through `cargo test --test web`)");

giveUpAfter("file", OVERALL_MS);

const problems = [];
const browser = await launchBrowser();
const page = await (await browser.newContext()).newPage();
page.setDefaultTimeout(15_000);
page.on("pageerror", (e) => problems.push(`uncaught ${e.message}`));
page.on("console", (m) => {
  if (m.type() === "error") problems.push(`console error: ${m.text()}`);
});

await page.goto(FILE_URL);
assert.equal(await page.evaluate(() => location.protocol), "file:");
await page.fill("#name", "filer");
await page.fill("#room", "lobby");
await page.click("#connect");
await page.locator('#status[data-state="connected"]').waitFor();
log("FILE_CONNECTED");

await page.fill("#text", "hello from a file");
await page.press("#text", "Enter");
// Confirmed: the server acknowledged it and gave it an id.
const row = page.locator("#log .row.chat", { hasText: "hello from a file" });
await page.waitForFunction((el) => el && !el.classList.contains("pending") && el.dataset.id, await row.elementHandle());
// The Rust side answers from a `wschat join` in the room once it has the message.
await page.locator("#log .row.chat", { hasText: "hello, file page" }).waitFor();

assert.deepEqual(problems, [], "no script errors in the page");
await browser.close();
log("FILE_OK");
process.exit(0);
