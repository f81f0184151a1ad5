// The console's end-to-end suite (issue 17): Debian's Chromium, driven by
// playwright-core, against a server the Rust test started. It fails (exit
// 1, with what went wrong) on the first broken promise; on success it
// prints what it saw as JSON for the Rust test to check against the vault.
import { createRequire } from "node:module";
import { readFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const require = createRequire(join(env("NODE_MODULES"), "noop.js"));
const { chromium } = require("playwright-core");
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const base = env("BASE");
const users = JSON.parse(env("USERS"));
const key = env("KEY");
const key2 = env("KEY2");
const shots = env("SHOTS");
mkdirSync(shots, { recursive: true });

const seen = { axe: {}, foreign: [], pages: [] };
function check(ok, what) {
  if (!ok) throw new Error(what);
}

const browser = await chromium.launch({ executablePath: env("CHROMIUM"), args: ["--no-sandbox"] });
try {
  const context = () =>
    browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1366, height: 900 } });

  // Everything any page loads must come from the console's own origin.
  const watch = (page) => {
    page.on("request", (r) => {
      const u = r.url();
      if (!u.startsWith(base + "/") && !u.startsWith("data:") && !u.startsWith("about:")) seen.foreign.push(u);
    });
    page.on("dialog", (d) => d.accept());
  };

  async function axe(page, name) {
    await page.evaluate(axeSource);
    const r = await page.evaluate(() => window.axe.run(document, { resultTypes: ["violations"] }));
    const bad = r.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
    seen.axe[name] = r.violations.map((v) => `${v.impact}: ${v.id} (${v.nodes.length})`);
    check(
      bad.length === 0,
      `axe-core on ${name}: ${bad.map((v) => `${v.impact} ${v.id}: ${v.help} at ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`).join("; ")}`,
    );
  }

  async function visit(page, path, name) {
    const resp = await page.goto(base + path);
    check(resp.status() === 200, `${path} answered ${resp.status()}: ${(await resp.text()).slice(0, 500)}`);
    const csp = resp.headers()["content-security-policy"] || "";
    check(csp.includes("default-src 'none'") && csp.includes("script-src 'self'"), `${path} has no strict CSP: ${csp}`);
    await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
    await axe(page, name);
    seen.pages.push(name);
    return resp;
  }

  async function login(page, who, next) {
    await page.goto(base + (next || "/ui/risk"));
    check(page.url().includes("/ui/login"), `a logged-out request to ${next} was not sent to login: ${page.url()}`);
    await page.fill("#name", users[who][0]);
    await page.fill("#credential", users[who][1]);
    await Promise.all([page.waitForNavigation(), page.click("form.login button[type=submit]")]);
    check(!page.url().includes("/ui/login"), `${who} could not sign in: ${await page.textContent("main")}`);
    const cookies = await page.context().cookies();
    const c = cookies.find((c) => c.name === "__Host-custos");
    check(c && c.httpOnly && c.secure && c.sameSite === "Strict", `the session cookie is not HttpOnly, Secure, SameSite=Strict: ${JSON.stringify(c)}`);
  }

  async function logout(page) {
    await Promise.all([page.waitForNavigation(), page.click("header form[action='/ui/logout'] button")]);
    check(page.url().includes("/ui/login"), `logout did not end at login: ${page.url()}`);
    const resp = await page.goto(base + "/ui/keys");
    check(page.url().includes("/ui/login?next=/ui/keys"), `after logout /ui/keys was not sent to login: ${page.url()}`);
  }

  // --- a logged-out visitor -------------------------------------------------
  {
    const ctx = await context();
    const page = await ctx.newPage();
    watch(page);
    await page.goto(base + "/ui/requests");
    check(page.url().endsWith("/ui/login?next=/ui/requests"), `logged out, /ui/requests went to ${page.url()}`);
    await page.screenshot({ path: join(shots, "login.png") });
    await axe(page, "login");
    // A wrong credential is refused and says so.
    await page.fill("#name", users.admin[0]);
    await page.fill("#credential", "not the credential");
    await Promise.all([page.waitForNavigation(), page.click("form.login button[type=submit]")]);
    check(page.url().includes("/ui/login"), "a wrong credential signed in");
    const refusal = await page.textContent("[role=alert]");
    check(/credential|not accepted|authenticat/i.test(refusal) && !refusal.includes("another site"), `a refused sign-in said: ${refusal}`);
    await ctx.close();
  }

  // --- a storage administrator backs a dataset up from its page -------------
  {
    const stor = await (await context()).newPage();
    watch(stor);
    await login(stor, "storage", "/ui/datasets/PAY.LEDGER");
    await visit(stor, "/ui/datasets/PAY.LEDGER", "dataset-before");
    check((await stor.locator("#copies").count()) === 0, "PAY.LEDGER has copies before its first backup");
    // A storage administrator has no data grant: raw copies only, no verify.
    check((await stor.locator("#method option").allTextContents()).join() === "raw", "the storage admin is offered logical copies");
    check((await stor.locator("form[action$='/verify']").count()) === 0, "the storage admin is offered a verify it may not run");
    await stor.selectOption("#to", "offsite");
    await Promise.all([stor.waitForNavigation(), stor.click("form[action$='/backup'] button")]);
    const said = await stor.textContent(".notice");
    check(!/refused|failed/i.test(said), `backing up said: ${said}`);
    check((await stor.locator("#copies tbody tr").count()) === 1, "the new copy is not listed");
    check((await stor.textContent("#copies tbody tr")).includes("raw"), "the copy is not raw");
    await logout(stor);
  }

  // --- the security administrator asks for a destruction --------------------
  const admin = await (await context()).newPage();
  watch(admin);
  await login(admin, "admin", "/ui/keys");
  check(admin.url().endsWith("/ui/keys"), `login did not return to /ui/keys: ${admin.url()}`);
  await visit(admin, "/ui/keys", "keys");
  await visit(admin, `/ui/keys/${key}`, "key");
  check((await admin.textContent("dd.deadline")).includes("none"), "the key is scheduled before anyone asked");
  await admin.fill("#wait", "7d");
  await Promise.all([admin.waitForNavigation(), admin.click("form.destroy button")]);
  const made = await admin.textContent(".notice");
  check(/request/i.test(made), `asking for the destruction said: ${made}`);
  // A second request, for the auditor to look at.
  await admin.goto(base + `/ui/keys/${key2}`);
  await Promise.all([admin.waitForNavigation(), admin.click("form.destroy button")]);
  await visit(admin, "/ui/requests", "requests-requester");
  check((await admin.locator("article.request button:has-text('Approve')").count()) === 0, "the requester may approve its own request");
  await logout(admin);

  // --- a second principal approves it in the inbox --------------------------
  const approver = await (await context()).newPage();
  watch(approver);
  await login(approver, "approver", "/ui/requests");
  await visit(approver, "/ui/requests", "requests");
  const article = approver.locator("article.request", { hasText: key }).first();
  check((await article.count()) === 1, `the request for ${key} is not in the inbox`);
  const requestId = await article.getAttribute("data-request");
  check((await article.textContent()).includes("label"), "the request does not show its fields");
  await Promise.all([approver.waitForNavigation(), article.locator("button:has-text('Approve')").click()]);
  const approved = await approver.textContent(".notice");
  check(!/refused/i.test(approved), `approving said: ${approved}`);
  await approver.goto(base + "/ui/keys");
  const row = approver.locator(`tr[data-key="${key}"]`);
  check((await row.locator("td.deadline").textContent()).includes("scheduled for"), "the Keys page does not show the deadline");
  await visit(approver, `/ui/keys/${key}`, "key-scheduled");
  const deadline = await approver.getAttribute("dd.deadline", "data-deadline");
  check(deadline, "the key page shows no deadline after approval");
  const state = await approver.getAttribute("#key [data-state]", "data-state");

  // The Risk page's Table 2, cell by cell, for the Rust test to compare
  // with `custos risk report --format json`.
  await visit(approver, "/ui/risk", "risk");
  const readCells = (table) =>
    approver.$$eval(`${table} td[data-verdict]`, (tds) =>
      tds.map((td) => ({
        subject: td.dataset.subject,
        threat: td.dataset.threat,
        verdict: td.dataset.verdict,
        text: td.querySelector(".cell-text").textContent,
        proof: td.querySelector("[data-proof]")?.dataset.proof ?? null,
      })),
    );
  const table2 = await readCells("#table-2");
  const byDataset = await readCells("#by-dataset-table");
  check(table2.length > 0, "Table 2 has no cells");
  // Every cell's reason is on the page, not only in a tooltip.
  check((await approver.locator("#table-2 td[title]").count()) === 0, "a cell keeps its reason in a tooltip");
  check((await approver.locator("ol.notes li").count()) > 0, "no reasons are listed");
  // Keyboard first: the first Tab reaches the skip link, which leads to the content.
  await approver.keyboard.press("Tab");
  check((await approver.evaluate(() => document.activeElement?.className)) === "skip", "the first Tab does not reach the skip link");
  // Printed: no navigation or buttons, every reason on paper.
  await approver.emulateMedia({ media: "print" });
  check(!(await approver.isVisible("header.top")) && !(await approver.isVisible(".toolbar")), "the printout carries the navigation");
  check(await approver.isVisible("ol.notes li"), "the printout lacks the reasons");
  await approver.pdf({ path: join(shots, "risk.pdf"), format: "A4", landscape: true });
  await approver.emulateMedia({ media: "screen" });
  // A wide monitor and a small laptop.
  for (const [w, h, name] of [[1920, 1080, "risk-wide"], [1024, 768, "risk-narrow"]]) {
    await approver.setViewportSize({ width: w, height: h });
    await approver.screenshot({ path: join(shots, `${name}.png`) });
    const overflow = await approver.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(overflow <= 0, `at ${w}px the page scrolls sideways by ${overflow}px (tables must scroll in their own box)`);
  }
  await approver.setViewportSize({ width: 1366, height: 900 });
  await visit(approver, "/ui/risk?dual=1", "risk-dual");
  // One application's datasets, by pattern.
  await approver.fill("input[name=pattern]", "HR.**");
  await Promise.all([approver.waitForNavigation(), approver.click("form.filters button[type=submit]")]);
  const rows = await approver.$$eval("#by-dataset-table tbody th", (ths) => ths.map((t) => t.firstChild.textContent));
  check(rows.length === 1 && rows[0] === "HR.PEOPLE", `the HR.** risk page shows ${rows}`);
  check((await approver.locator("#pairs-by-dataset").count()) === 1, "the dual box was not kept");
  await visit(approver, "/ui/datasets", "datasets");
  const first = await approver.locator("#datasets th a").first().getAttribute("href");
  await visit(approver, first, "dataset");
  await visit(approver, "/ui/health", "health");
  await visit(approver, "/ui/audit", "audit-admin");
  await logout(approver);

  // --- the auditor: reads, never decides ------------------------------------
  const auditor = await (await context()).newPage();
  watch(auditor);
  await login(auditor, "auditor", "/ui/audit");
  await visit(auditor, "/ui/audit", "audit");
  check((await auditor.locator("#audit tbody tr").count()) > 0, "the auditor sees no audit entries");
  // Filters: one principal, refusals only.
  await auditor.fill("input[name=principal]", "sadmin");
  await auditor.selectOption("select[name=outcome]", "ok");
  await Promise.all([auditor.waitForNavigation(), auditor.click("form.filters button")]);
  const who = await auditor.$$eval("#audit tbody tr", (rows) => rows.map((r) => r.children[2].textContent));
  const outcomes = await auditor.$$eval("#audit tbody tr", (rows) => rows.map((r) => r.children[5].textContent));
  check(who.length > 0 && who.every((w) => w === "sadmin"), `filtering by principal showed ${who}`);
  check(outcomes.every((o) => o === "ok" || o.startsWith("ok:")), `filtering by outcome showed ${outcomes}`);
  check(outcomes.some((o) => o.startsWith("ok: request")), `the requests sadmin made are not among its successes: ${outcomes}`);
  await Promise.all([auditor.waitForNavigation(), auditor.click("form[action='/ui/audit/verify'] button")]);
  const verified = await auditor.textContent(".notice");
  check(/entries|intact|verified|chain/i.test(verified), `verifying the audit log said: ${verified}`);
  await visit(auditor, "/ui/requests", "requests-auditor");
  const pending = auditor.locator("article.request", { hasText: key2 }).first();
  check((await pending.count()) === 1, `the auditor does not see the pending request for ${key2}`);
  check((await auditor.locator("article.request button").count()) === 0, "the auditor is offered a decision");
  const pendingId = await pending.getAttribute("data-request");
  // A forged approval from the auditor's own session, with its valid CSRF token.
  const csrf = await auditor.getAttribute("header input[name=csrf]", "value");
  const forged = await auditor.request.post(base + `/ui/requests/${pendingId}/approve`, {
    form: { csrf },
    headers: { Origin: base },
    maxRedirects: 0,
  });
  check(forged.status() === 403, `the auditor's forged approval answered ${forged.status()}`);
  // And one without the token, as another site's page would send it.
  const noToken = await auditor.request.post(base + `/ui/requests/${pendingId}/approve`, {
    form: { csrf: "x" },
    headers: { Origin: "https://evil.example" },
    maxRedirects: 0,
  });
  check(noToken.status() === 403, `a cross-site approval answered ${noToken.status()}`);
  await auditor.goto(base + "/ui/requests");
  check((await auditor.locator("article.request", { hasText: key2 }).count()) === 1, "the forged approval decided the request");
  await logout(auditor);

  // --- a principal disabled mid-session loses its session at once ----------
  {
    const page = await (await context()).newPage();
    watch(page);
    await login(page, "auditor", "/ui/audit");
    const auth = "Basic " + Buffer.from(`${users.admin[0]}:${users.admin[1]}`).toString("base64");
    const r = await page.request.post(base + "/v1/ops", { headers: { Authorization: auth }, data: { op: "user-disable", name: users.auditor[0] } });
    check(r.ok(), `disabling the auditor answered ${r.status()}: ${await r.text()}`);
    await page.goto(base + "/ui/audit");
    check(page.url().includes("/ui/login"), `a disabled principal still sees ${page.url()}`);
    const back = await page.request.post(base + "/v1/ops", { headers: { Authorization: auth }, data: { op: "user-enable", name: users.auditor[0] } });
    check(back.ok(), `enabling the auditor again answered ${back.status()}`);
  }

  check(seen.foreign.length === 0, `pages loaded from other origins: ${seen.foreign.join(", ")}`);
  console.log(JSON.stringify({ requestId, pendingId, deadline, state, table2, byDataset, axe: seen.axe, pages: seen.pages }));
} finally {
  await browser.close();
}
