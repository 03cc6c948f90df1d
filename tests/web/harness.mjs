// What the page scripts share: a bound on the whole run, progress lines on stdout, lines from
// the Rust side (tests/web.rs) on stdin, and headless Chromium.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import assert from "node:assert/strict";

/// Ends the script with exit 3 if it is not done after `ms`.
export function giveUpAfter(name, ms) {
  const overall = setTimeout(() => {
    console.error(`${name}: not finished after ${ms / 1000} s; giving up`);
    process.exit(3);
  }, ms);
  overall.unref();
}

/// A line for the Rust side.
export const log = (line) => process.stdout.write(`${line}\n`);

// Lines from the Rust side, one at a time.
const incoming = [];
const waiting = [];
createInterface({ input: process.stdin }).on("line", (line) => {
  const w = waiting.shift();
  if (w) w(line.trim());
  else incoming.push(line.trim());
});

/// Waits for the next line from the Rust side, which must be `want`.
export async function expectLine(want) {
  const got = incoming.length ? incoming.shift() : await new Promise((r) => waiting.push(r));
  assert.equal(got, want, `expected the line ${want} from the test, got ${got}`);
}

/// Headless Chromium (Debian's, or WSCHAT_CHROMIUM).
export function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.WSCHAT_CHROMIUM || "/usr/bin/chromium",
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
}
