// Drives the wschat web page in headless Chromium. Started by tests/web.rs, which runs the
// server and restarts it when asked. Lines on stdout are the protocol with the Rust side:
//   READY_FOR_RESTART  -> the Rust test stops the server (SIGTERM) and answers STOPPED
//   START_SERVER       -> it starts the server again on the same port and answers RESTARTED
//   E2E_OK             -> every check passed
// Anything else on stdout is a progress line. Exits non-zero on the first failed check.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import assert from "node:assert/strict";
import { expectLine, giveUpAfter, launchBrowser, log } from "./harness.mjs";

const PAGE_URL = process.env.WSCHAT_PAGE_URL;
const SHOTS = process.env.WSCHAT_SCREENSHOTS;
const OVERALL_MS = 60_000;
if (!PAGE_URL) throw new Error("WSCHAT_PAGE_URL is not set (run this through `cargo test --test web`)");

giveUpAfter("e2e", OVERALL_MS);


const problems = [];
const browser = await launchBrowser();

async function openPage(name, options, refused = false) {
  const context = await browser.newContext(options);
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  page.on("pageerror", (e) => problems.push(`${name}: uncaught ${e.message}`));
  page.on("console", (m) => {
    // Expected: a refused WebSocket while the server is down, and the browser's own request
    // for /favicon.ico, which the server answers 426 like any path that is not a page. A CSP
    // violation or a script error is not.
    const text = m.text();
    const favicon = (m.location().url || "").endsWith("/favicon.ico");
    if (m.type() === "error" && !favicon && !/WebSocket connection to .* failed/.test(text)) {
      problems.push(`${name}: console error: ${text}`);
    }
  });
  const response = await page.goto(PAGE_URL);
  assert.equal(response.status(), 200);
  assert.match(response.headers()["content-security-policy"] || "", /default-src 'self'/);
  await page.fill("#name", name);
  await page.fill("#room", "lobby");
  await page.click("#connect");
  if (!refused) await page.locator('#status[data-state="connected"]').waitFor();
  return page;
}

// Types a line into the message box and presses Enter, as a person would.
async function type(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

// The chat row (exactly one) whose message text is `text`.
function rowWith(page, text) {
  return page.locator("#log .row.chat").filter({
    has: page.locator(".text", { hasText: new RegExp(`^${text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`) }),
  });
}

async function expectRow(page, who, text) {
  const row = rowWith(page, text);
  await row.waitFor();
  assert.equal(await row.count(), 1, `one row with ${JSON.stringify(text)}`);
  assert.equal((await row.locator(".who").textContent()).replace(/^\* /, ""), who);
  assert.match(await row.locator("time").textContent(), /\d{1,2}[:.]\d{2}/, "a local time");
  return row;
}

// A confirmed own message: no longer pending, and carries the id the server gave it.
async function expectConfirmed(page, text) {
  const row = rowWith(page, text);
  await page.waitForFunction(
    (el) => el && !el.classList.contains("pending") && el.dataset.id,
    await row.elementHandle(),
  );
  return Number(await row.getAttribute("data-id"));
}

// How many rows each chat id has, for the room `lobby`.
async function idCounts(page) {
  return page.$$eval('#log .row.chat[data-room="lobby"]', (rows) => {
    const counts = {};
    for (const r of rows) counts[r.dataset.id] = (counts[r.dataset.id] || 0) + 1;
    return counts;
  });
}

function expectIds(name, counts, total) {
  const ids = Object.keys(counts).map(Number).sort((a, b) => a - b);
  const dups = Object.entries(counts).filter(([, n]) => n !== 1);
  assert.deepEqual(dups, [], `${name}: every id shown once`);
  assert.deepEqual(ids, Array.from({ length: total }, (_, i) => i + 1), `${name}: ids 1..${total}, none lost`);
}

let sent = 0; // public messages sent to lobby: their ids are 1..sent

// (a) Two people chat both ways.
const alice = await openPage("alice", { viewport: { width: 375, height: 720 }, isMobile: true, hasTouch: true });
const bob = await openPage("bob", { viewport: { width: 375, height: 720 }, isMobile: true, hasTouch: true, colorScheme: "dark" });
await alice.locator("#where", { hasText: "2 here" }).waitFor();
await alice.locator(".note", { hasText: "bob joined the chat" }).waitFor();

await type(alice, "hello from alice");
sent++;
const own = rowWith(alice, "hello from alice");
assert.equal(await own.count(), 1, "alice's own message is shown at once");
await expectRow(bob, "alice", "hello from alice");
assert.equal(await expectConfirmed(alice, "hello from alice"), 1);

await type(bob, "hi alice, bob here");
sent++;
await expectRow(alice, "bob", "hi alice, bob here");
assert.equal(await expectConfirmed(bob, "hi alice, bob here"), 2);

await type(alice, "/me waves");
sent++;
const action = await expectRow(bob, "alice", "waves");
assert.ok(await action.evaluate((el) => el.classList.contains("action")), "an action row");

await type(alice, "/msg bob just between us");
const secret = await expectRow(bob, "alice", "just between us");
assert.ok(await secret.evaluate((el) => el.classList.contains("private")), "marked private for bob");
assert.match(await secret.textContent(), /private/);
const secretOwn = rowWith(alice, "just between us");
await alice.waitForFunction((el) => !el.classList.contains("pending"), await secretOwn.elementHandle());
assert.match(await secretOwn.textContent(), /private to bob/);
assert.equal(await secretOwn.count(), 1, "the server's copy of a private message is not shown twice");
log("checked: alice and bob chat both ways, /me, /msg");

// A second alice is refused with a clear line, and the page does not keep retrying.
const impostor = await openPage("alice", { viewport: { width: 800, height: 600 } }, true);
await impostor.locator(".note.error", { hasText: "the name 'alice' is already taken" }).waitFor();
await impostor.locator('#status[data-state="offline"]').waitFor();
await impostor.context().close();

// (d) Markup from others is inert text.
const evil = `<script>window.__pwned=1</script><img src=x onerror="window.__pwned=1">`;
await type(bob, evil);
sent++;
const evilRow = await expectRow(alice, "bob", evil);
assert.equal(await evilRow.locator(".text").textContent(), evil);
assert.ok(await evilRow.locator(".text").isVisible(), "the markup is visible as text");
await expectConfirmed(bob, evil);

// (b) A third person joins and gets the earlier messages as history.
const carol = await openPage("carol", { viewport: { width: 1280, height: 800 } });
await carol.locator("#log .divider", { hasText: "history" }).waitFor();
for (const [who, text] of [["alice", "hello from alice"], ["bob", "hi alice, bob here"], ["alice", "waves"], ["bob", evil]]) {
  const row = await expectRow(carol, who, text);
  assert.ok(await row.evaluate((el) => el.classList.contains("history")), `${text} is shown as history`);
}
assert.equal(await rowWith(carol, "just between us").count(), 0, "private messages are not history");
await carol.locator("#log .divider", { hasText: "now" }).waitFor();
await type(carol, "/who");
await carol.locator(".note", { hasText: "In #lobby: alice, bob, carol" }).waitFor();
log("checked: carol sees the earlier messages as history; /who");

for (const [name, page] of [["alice", alice], ["bob", bob], ["carol", carol]]) {
  assert.equal(await page.evaluate(() => window.__pwned), undefined, `${name}: no script ran`);
  assert.equal(await page.locator("#log img, #log script").count(), 0, `${name}: no element was made`);
}
log("checked: <script> and <img onerror> render as inert text");

// (c) The server restarts; the pages reconnect and resume without loss or duplicates.
const before = { alice: await idCounts(alice), bob: await idCounts(bob), carol: await idCounts(carol) };
for (const [name, counts] of Object.entries(before)) expectIds(name, counts, sent);

log("READY_FOR_RESTART");
await expectLine("STOPPED");
for (const page of [alice, bob, carol]) {
  await page.locator('#status[data-state="reconnecting"]').waitFor();
}
// Typed while the server is down: shown at once, sent once the page is back.
await type(alice, "typed while the server was down");
sent++;
const offline = rowWith(alice, "typed while the server was down");
assert.ok(await offline.evaluate((el) => el.classList.contains("pending")), "pending while offline");
log("START_SERVER");
await expectLine("RESTARTED");
for (const page of [alice, bob, carol]) {
  await page.locator('#status[data-state="connected"]').waitFor({ timeout: 30_000 });
  await page.locator(".note", { hasText: "reconnected to #lobby" }).waitFor();
}
await expectRow(bob, "alice", "typed while the server was down");
await expectRow(carol, "alice", "typed while the server was down");
assert.equal(await expectConfirmed(alice, "typed while the server was down"), sent);

await type(bob, "after the restart");
sent++;
await expectRow(alice, "bob", "after the restart");
await expectRow(carol, "bob", "after the restart");
assert.equal(await expectConfirmed(bob, "after the restart"), sent);
for (const [name, page] of [["alice", alice], ["bob", bob], ["carol", carol]]) {
  expectIds(name, await idCounts(page), sent);
  assert.equal(await page.locator("#log .row.pending, #log .row.failed").count(), 0, `${name}: nothing left unsent`);
}
log(`checked: restart, reconnect and resume; ids 1..${sent} each shown once on every page`);

if (SHOTS) {
  mkdirSync(SHOTS, { recursive: true });
  await alice.screenshot({ path: join(SHOTS, "web-phone.png") });
  await bob.screenshot({ path: join(SHOTS, "web-phone-dark.png") });
  await carol.screenshot({ path: join(SHOTS, "web-desktop.png") });
  log(`screenshots in ${SHOTS}`);
}

assert.deepEqual(problems, [], "no script errors or CSP violations in the pages");
await browser.close();
log("E2E_OK");
process.exit(0);
