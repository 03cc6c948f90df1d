// One page in headless Chromium through a SIGKILL restart of an in-memory server, whose new
// history reuses the ids of the old one. Started by tests/web.rs. Lines on stdout:
//   OLD_SEEN   -> the page shows old-1..old-5; the Rust side kills the server, starts it
//                 again on the same port, sends new-1..new-10 and answers SENT
//   RESTART_OK -> the page shows every message once: old-1..5 and new-1..10
// Exits non-zero on the first failed check.
import assert from "node:assert/strict";
import { expectLine, giveUpAfter, launchBrowser, log } from "./harness.mjs";

const PAGE_URL = process.env.WSCHAT_PAGE_URL;
const OVERALL_MS = 60_000;
if (!PAGE_URL) throw new Error("WSCHAT_PAGE_URL is not set (run this through `cargo test --test web`)");

giveUpAfter("restart", OVERALL_MS);

const browser = await launchBrowser();
const page = await (await browser.newContext()).newPage();
page.setDefaultTimeout(20_000);
const problems = [];
page.on("pageerror", (e) => problems.push(`uncaught ${e.message}`));

await page.goto(PAGE_URL);
await page.fill("#name", "alice");
await page.fill("#room", "lobby");
await page.click("#connect");
await page.locator('#status[data-state="connected"]').waitFor();
log("CONNECTED");
const chat = (text) => page.locator("#log .row.chat", { hasText: new RegExp(`^.*${text}$`) });
for (let i = 1; i <= 5; i++) await chat(`old-${i}`).first().waitFor();
const sent = expectLine("SENT");
log("OLD_SEEN");
await sent;
for (let i = 1; i <= 10; i++) await chat(`new-${i}`).first().waitFor();
for (const text of [...[1, 2, 3, 4, 5].map((i) => `old-${i}`), ...[...Array(10).keys()].map((i) => `new-${i + 1}`)]) {
  assert.equal(await chat(text).count(), 1, `${text} is shown once`);
}
assert.deepEqual(problems, [], "no script errors in the page");
await browser.close();
log("RESTART_OK");
process.exit(0);
