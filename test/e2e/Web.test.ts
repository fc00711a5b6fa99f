/**
 * The web UI in a real browser (Debian Chromium through playwright-core) against a real
 * `vibes serve` process, with the UI built from the sources. Screenshots of the main views go
 * to test-results/ for a person to look at.
 */
import { expect, layer } from "@effect/vitest"
import * as fs from "node:fs"
import * as path from "node:path"
import * as zlib from "node:zlib"
import { Chunk, Context, Effect, Exit, Layer, Option, Redacted, Schedule, Scope, Stream } from "effect"
import type { Browser, BrowserContext, BrowserContextOptions, Page } from "playwright-core"
import WebSocket from "ws"
import * as Client from "../../rpc/Client.js"
import { JobSpec } from "../../rpc/Jobs.js"
import * as FreePort from "../../infra/net/FreePort.js"
import { clientLayer, eventually, stopPtyHostAtEnd } from "../support/Attach.js"
import * as Web from "../support/Browser.js"
import * as TestDatabase from "../support/TestDatabase.js"
import * as FakeProvider from "../support/FakeProvider.js"
import * as ProxyTokens from "../../actors/proxy/ProxyTokens.js"
import { tempDir, writableTempDir } from "../support/TempDir.js"
import * as Vibes from "../support/VibesProcess.js"

/** A server process (restartable on its port), its token, a client to it, and a browser. */
class WebEnv extends Context.Tag("test/WebEnv")<
  WebEnv,
  {
    readonly url: string
    readonly loginUrl: string
    readonly token: string
    readonly workDir: string
    /** The UI as built for this run. */
    readonly webDir: string
    readonly browser: Browser
    readonly rpc: Client.Client
    /** Stops the server gracefully and starts it again on the same port and data. */
    readonly restart: Effect.Effect<void>
    /** What the server (the one running now) has logged. */
    readonly serverLines: () => ReadonlyArray<string>
  }
>() {}

const EnvLive = Layer.scoped(
  WebEnv,
  Effect.gen(function* () {
    const webDir = yield* tempDir("vibes-web-")
    yield* Web.buildWeb(webDir)
    const dataDir = yield* tempDir("vibes-e2e-")
    // Sessions and jobs work in it, and may run as the sandbox's user.
    const workDir = yield* writableTempDir("vibes-e2e-work-")
    yield* stopPtyHostAtEnd(dataDir)
    const database = yield* TestDatabase.freshDatabase("vibes_e2e")
    // An AI provider for the conversation panel: the fake, priced.
    const fake = yield* FakeProvider.make({ apiKey: fakeProviderKey })
    const env = Vibes.childEnv({
      DATABASE_URL: Redacted.value(database.url),
      VIBES_WEB_DIR: webDir,
      VIBES_TEST_E2E_FAKE_KEY: fakeProviderKey,
      VIBES_PROXY_PROVIDERS: JSON.stringify([
        FakeProvider.providerConfig("fake", fake.url, {
          format: "anthropic",
          auth: "x-api-key",
          keyEnv: "VIBES_TEST_E2E_FAKE_KEY"
        })
      ]),
      VIBES_PROXY_PRICES: JSON.stringify([{ model: "claude-e2e-*", input: 3, output: 15 }])
    })
    const port = yield* FreePort.find()
    let serverScope = yield* Scope.make()
    yield* Effect.addFinalizer(() => Scope.close(serverScope, Exit.void))
    const first = yield* Vibes.serve(dataDir, env, port).pipe(Scope.extend(serverScope))
    const token = fs.readFileSync(path.join(dataDir, "admin-token"), "utf8").trim()
    const rpc = yield* Effect.map(Layer.build(clientLayer(first.url, token)), Context.get(Client.VibesClient))
    const browser = yield* Web.launch
    let current = first
    const restart = Effect.gen(function* () {
      yield* Scope.close(serverScope, Exit.void)
      serverScope = yield* Scope.make()
      current = yield* Vibes.serve(dataDir, env, port).pipe(Scope.extend(serverScope))
      // The shared client reconnects in the background, with backoff; a call made before it has
      // would fail. The restart is done once the client answers again.
      yield* rpc.System.Info().pipe(
        Effect.retry(Schedule.spaced("100 millis").pipe(Schedule.upTo("30 seconds")))
      )
    }).pipe(Effect.orDie)
    const serverLines = () => current.lines
    return {
      url: first.url,
      loginUrl: first.loginUrl,
      token,
      workDir,
      webDir,
      browser,
      rpc,
      restart,
      serverLines
    }
  })
)

const promise = <A>(f: () => Promise<A>) => Effect.promise(f)

const fakeProviderKey = "sk-fake-provider-key-for-the-web-test"

/** A fresh browser context (no cookies) for the life of the scope. */
const context = (options: BrowserContextOptions = {}) =>
  Effect.flatMap(WebEnv, ({ browser }) =>
    Effect.acquireRelease(
      promise(() => browser.newContext({ viewport: { width: 1280, height: 800 }, ...options })),
      (ctx) => promise(() => ctx.close())
    )
  )

/**
 * A page logged in through the URL the server printed. When the test fails, the page's text and
 * the end of the server's log are printed with it.
 */
const loggedIn = (ctx: BrowserContext) =>
  Effect.gen(function* () {
    const { loginUrl, url, serverLines } = yield* WebEnv
    const page = yield* promise(() => ctx.newPage())
    yield* Effect.addFinalizer((exit) =>
      Exit.isFailure(exit)
        ? promise(() => page.evaluate(() => document.body.innerText).catch((e: unknown) => String(e))).pipe(
            Effect.flatMap((text) =>
              Effect.sync(() =>
                console.error(
                  `the page showed:\n${text}\n\nthe server's last log lines:\n${serverLines().slice(-60).join("\n")}`
                )
              )
            )
          )
        : Effect.void
    )
    yield* promise(() => page.goto(loginUrl))
    yield* promise(() => page.waitForURL(`${url}/`))
    yield* promise(() => page.getByRole("link", { name: "Sessions" }).waitFor())
    return page
  })

/** Starts a session through the form and opens its terminal. */
const newSession = (page: Page, name: string) =>
  Effect.gen(function* () {
    const { workDir } = yield* WebEnv
    yield* promise(() => page.goto(`${new URL(page.url()).origin}/#/sessions`))
    yield* promise(() => page.getByRole("textbox", { name: "Command" }).fill("/bin/bash"))
    yield* promise(() => page.getByLabel("Working directory").fill(workDir))
    yield* promise(() => page.getByLabel("Name").fill(name))
    yield* promise(() => page.getByRole("button", { name: "Start session" }).click())
    yield* promise(() => page.waitForURL(/#\/sessions\/[a-z0-9-]+_[0-9a-f-]{36}$/))
    yield* promise(() => page.locator('[data-testid="terminal"][data-attachments="1"]').waitFor())
    const sessionId = page.url().split("/").at(-1) ?? ""
    return sessionId
  })

/** Types a line into the focused terminal and presses Enter. */
const typeLine = (page: Page, text: string) =>
  promise(async () => {
    await page.locator(".xterm-helper-textarea").focus()
    await page.keyboard.type(text)
    await page.keyboard.press("Enter")
  })

const terminalText = (page: Page) =>
  Effect.map(Web.terminalText(page), (text) => text.replaceAll("\u00a0", " "))

layer(EnvLive, { timeout: 240_000, excludeTestServices: true })("web UI in a real browser", (it) => {
  it.scoped(
    "logging in through the printed URL sets a strict cookie and clears the token from the address bar",
    () =>
      Effect.gen(function* () {
        const { url, loginUrl, token } = yield* WebEnv
        const ctx = yield* context()

        // Without a login, the page is the login form, not a broken app.
        const anonymous = yield* promise(() => ctx.newPage())
        const first = yield* promise(() => anonymous.goto(`${url}/`))
        expect(first?.status()).toBe(401)
        yield* promise(() => anonymous.getByLabel("Admin token").waitFor())
        // A wrong token is refused the same way.
        yield* promise(() => anonymous.goto(`${url}/login?token=not-the-token`))
        yield* promise(() => anonymous.getByText("That token is not valid").waitFor())

        const page = yield* loggedIn(ctx)
        expect(page.url()).toBe(`${url}/`)
        expect(page.url()).not.toContain(token)
        const history = yield* promise(() => page.evaluate(() => location.href))
        expect(history).not.toContain("token")
        const cookies = yield* promise(() => ctx.cookies())
        expect(cookies).toHaveLength(1)
        expect(cookies[0]).toMatchObject({ name: "vibes_login", httpOnly: true, sameSite: "Strict" })
        // The cookie holds a login id, never the token.
        expect(cookies[0]?.value).not.toContain(token)
        // The cookie is not readable by scripts.
        expect(yield* promise(() => page.evaluate(() => document.cookie))).toBe("")
        yield* Web.screenshot(page, "web-sessions")

        // Security headers on the app itself.
        const response = yield* promise(() => page.goto(`${url}/`))
        const headers = response?.headers() ?? {}
        expect(headers["content-security-policy"]).toContain("frame-ancestors 'none'")
        expect(headers["content-security-policy"]).toContain("script-src 'self'")
        expect(headers["x-content-type-options"]).toBe("nosniff")
        expect(headers["referrer-policy"]).toBe("same-origin")
        expect(headers["access-control-allow-origin"]).toBeUndefined()

        // Logging out clears the cookie; the app asks for a login again.
        yield* promise(() => page.getByRole("button", { name: "Log out" }).click())
        yield* promise(() => page.getByLabel("Admin token").waitFor())
        expect(yield* promise(() => ctx.cookies())).toHaveLength(0)
        expect(loginUrl).toContain("/login?token=")
      })
  )

  it.scoped("another origin's page cannot use the cookie: the WebSocket upgrade and the API refuse it", () =>
    Effect.gen(function* () {
      const { url, token } = yield* WebEnv
      const rpcUrl = Client.rpcUrl(url)
      const upgrade = (origin: string) =>
        promise(
          () =>
            new Promise<number>((resolve) => {
              const socket = new WebSocket(rpcUrl, ["vibes.rpc.v1"], {
                headers: { origin, authorization: `Bearer ${token}` }
              })
              socket.on("open", () => {
                socket.close()
                resolve(101)
              })
              socket.on("unexpected-response", (_request, response) => {
                resolve(response.statusCode ?? 0)
                socket.terminate()
              })
              socket.on("error", () => undefined)
            })
        )
      expect(yield* upgrade("https://evil.example")).toBe(403)
      expect(yield* upgrade(new URL(url).origin)).toBe(101)
      const api = yield* promise(() =>
        fetch(`${url}/api/jobs?limit=1`, {
          headers: { origin: "https://evil.example", authorization: `Bearer ${token}` }
        })
      )
      expect(api.status).toBe(403)
      expect(api.headers.get("access-control-allow-origin")).toBeNull()
      // The same request from the server's own origin goes through.
      const own = yield* promise(() =>
        fetch(`${url}/api/jobs?limit=1`, { headers: { origin: url, authorization: `Bearer ${token}` } })
      )
      expect(own.status).toBe(200)
    })
  )

  it.scoped(
    "a terminal: type, see the output, follow the window's size, survive a reload and a server restart",
    () =>
      Effect.gen(function* () {
        const { rpc, restart } = yield* WebEnv
        const ctx = yield* context()
        const page = yield* loggedIn(ctx)
        const sessionId = yield* newSession(page, "e2e-shell")

        yield* typeLine(page, "echo h''i")
        yield* Web.untilTerminal(page, /^hi$/m)

        // The PTY follows the browser window.
        const wide = yield* Effect.map(rpc.Sessions.Get({ sessionId }), (info) => info.cols)
        yield* typeLine(page, "echo COLS=$(tput cols)")
        yield* Web.untilTerminal(page, new RegExp(`^COLS=${wide}$`, "m"))
        yield* promise(() => page.setViewportSize({ width: 700, height: 700 }))
        const narrow = yield* eventually(
          Effect.map(rpc.Sessions.Get({ sessionId }), (info) =>
            info.cols < wide ? Option.some(info.cols) : Option.none()
          ),
          "the session to follow the narrower window"
        )
        yield* typeLine(page, "echo NARROW=$(tput cols)")
        yield* Web.untilTerminal(page, new RegExp(`^NARROW=${narrow}$`, "m"))
        yield* Web.screenshot(page, "web-terminal")

        // A reload brings the same screen back.
        yield* promise(() => page.reload())
        yield* promise(() => page.locator('[data-testid="terminal"][data-attachments="1"]').waitFor())
        yield* Web.untilTerminal(page, new RegExp(`^NARROW=${narrow}$`, "m"))
        yield* Web.untilTerminal(page, /^hi$/m)

        // The server stops and starts again: the terminal reconnects by itself and continues.
        yield* restart
        yield* promise(() =>
          page.locator('[data-testid="terminal"][data-attachments="2"]').waitFor({ timeout: 30_000 })
        )
        yield* typeLine(page, "echo after-$((40+2))")
        yield* Web.untilTerminal(page, /^after-42$/m)
        expect(yield* terminalText(page)).toMatch(new RegExp(`^NARROW=${narrow}$`, "m"))
      })
  )

  it.scoped(
    "the job cockpit: stdout and stderr styled apart, status and exit code, run disabled while running, cancel, history",
    () =>
      Effect.gen(function* () {
        const { workDir } = yield* WebEnv
        const ctx = yield* context()
        const page = yield* loggedIn(ctx)
        yield* promise(() => page.getByRole("link", { name: "Jobs" }).click())
        const gate = path.join(workDir, "job-gate")
        const run = page.getByRole("button", { name: /^Run/ })

        yield* promise(() =>
          page
            .getByRole("textbox", { name: "Command" })
            .fill(
              `echo to-stdout; echo to-stderr >&2; while [ ! -e ${gate} ]; do sleep 0.05; done; echo finishing; exit 3`
            )
        )
        yield* promise(() => run.click())
        yield* promise(() => page.locator('.line.stdout:has-text("to-stdout")').waitFor())
        yield* promise(() => page.locator('.line.stderr:has-text("to-stderr")').waitFor())
        // While the job it started runs, the panel's button waits.
        expect(yield* promise(() => run.isDisabled())).toBe(true)
        const colours = yield* promise(() =>
          page.evaluate(() =>
            ["stdout", "stderr"].map((stream) => {
              const line = document.querySelector(`.line.${stream}`)
              return line === null ? "" : getComputedStyle(line).color
            })
          )
        )
        expect(colours[0]).not.toBe(colours[1])
        // Distinguishable without colour, too: each line is tagged.
        expect(yield* promise(() => page.locator(".line.stderr .tag").first().innerText())).toBe("err")
        fs.writeFileSync(gate, "")
        yield* promise(() => page.locator('[data-testid="job-status"] [data-state="failed"]').waitFor())
        expect(yield* promise(() => page.getByTestId("job-exit").innerText())).toBe("exit code 3")
        yield* promise(() => page.locator('.line.stdout:has-text("finishing")').waitFor())
        yield* promise(() =>
          page.waitForFunction(
            () => !document.querySelector<HTMLButtonElement>("form button[type=submit]")?.disabled
          )
        )
        yield* Web.screenshot(page, "web-jobs")

        // A long job is canceled from the log viewer.
        yield* promise(() =>
          page.getByRole("textbox", { name: "Command" }).fill("echo long-job; exec sleep 1000")
        )
        yield* promise(() => run.click())
        yield* promise(() => page.locator('.line.stdout:has-text("long-job")').waitFor())
        yield* promise(() => page.getByRole("button", { name: "Cancel job", exact: true }).click())
        yield* promise(() => page.locator('[data-testid="job-status"] [data-state="canceled"]').waitFor())
        yield* promise(() =>
          page.waitForFunction(
            () => !document.querySelector<HTMLButtonElement>("form button[type=submit]")?.disabled
          )
        )

        // The history lists them, with their status and exit code.
        yield* promise(() => page.getByRole("button", { name: "Refresh" }).click())
        const rows = page.locator("tr[data-job]")
        yield* promise(() => page.locator('tr[data-job] [data-state="canceled"]').waitFor())
        yield* promise(() => page.locator('tr[data-job] [data-state="failed"]').waitFor())
        expect(yield* promise(() => rows.count())).toBeGreaterThanOrEqual(2)

        // A running job is canceled from its row in the history, too.
        yield* promise(() =>
          page.getByRole("textbox", { name: "Command" }).fill("echo from-history; exec sleep 1000")
        )
        yield* promise(() => run.click())
        yield* promise(() => page.locator('.line.stdout:has-text("from-history")').waitFor())
        yield* promise(() => page.getByRole("button", { name: "Refresh" }).click())
        const running = page.locator('tr[data-job]:has([data-state="running"])')
        yield* promise(() => running.getByRole("button", { name: /^Cancel job / }).click())
        yield* promise(() => page.locator('[data-testid="job-status"] [data-state="canceled"]').waitFor())
        yield* promise(() => page.getByRole("button", { name: "Refresh" }).click())
        yield* promise(() =>
          page.locator('tr[data-job] [data-state="running"]').waitFor({ state: "detached" })
        )
        expect(yield* promise(() => page.locator('tr[data-job] [data-state="canceled"]').count())).toBe(2)
        yield* Web.screenshot(page, "web-job-history")
      })
  )

  it.scoped(
    "the sessions list shows a live thumbnail of each running session, and which wait for input",
    () =>
      Effect.gen(function* () {
        const { rpc, workDir } = yield* WebEnv
        const session = yield* rpc.Sessions.Create({
          command: "/bin/sh",
          args: ["-c", "echo thumbnail-text; exec cat"],
          cwd: workDir,
          name: "with-a-thumbnail"
        })
        const ctx = yield* context()
        const page = yield* loggedIn(ctx)
        yield* promise(() => page.goto(`${new URL(page.url()).origin}/#/sessions`))
        const row = page.locator(`tr[data-session="${session.id}"]`)
        const preview = row.locator('[data-testid="preview"]')
        yield* promise(() => preview.filter({ hasText: "thumbnail-text" }).waitFor())
        // Live: what the program prints next shows up without a reload.
        yield* rpc.Sessions.Input({ sessionId: session.id, data: new TextEncoder().encode("typed-later\r") })
        yield* promise(() => preview.filter({ hasText: "typed-later" }).waitFor())
        // Quiet for the idle time: the row says it is waiting for input.
        yield* promise(() => row.getByText("waiting for input").waitFor({ timeout: 30_000 }))
        expect(yield* promise(() => row.getAttribute("class"))).toContain("waiting")
        yield* Web.screenshot(page, "web-session-previews")
        yield* rpc.Sessions.Close({ sessionId: session.id })
      })
  )

  it.scoped("the events feed shows session.created live", () =>
    Effect.gen(function* () {
      const { rpc, workDir } = yield* WebEnv
      const ctx = yield* context()
      const page = yield* loggedIn(ctx)
      yield* promise(() => page.getByRole("link", { name: "Events" }).click())
      yield* promise(() => page.getByRole("status").filter({ hasText: "live" }).waitFor())
      const session = yield* rpc.Sessions.Create({ command: "/bin/sh", cwd: workDir, name: "for-the-feed" })
      yield* promise(() =>
        page.locator(`tr[data-type="session.created"]:has-text("${session.id.slice(-8)}")`).waitFor()
      )
      yield* Web.screenshot(page, "web-events")
      yield* rpc.Sessions.Close({ sessionId: session.id })
    })
  )

  it.scoped("a session's AI conversation appears live beside its terminal, with its cost", () =>
    Effect.gen(function* () {
      const { rpc, workDir, url, token } = yield* WebEnv
      const session = yield* rpc.Sessions.Create({
        command: "/bin/sh",
        cwd: workDir,
        name: "with-an-agent"
      })
      const ctx = yield* context()
      const page = yield* loggedIn(ctx)
      yield* promise(() => page.goto(`${new URL(page.url()).origin}/#/sessions/${session.id}`))
      const panel = page.getByRole("complementary", { name: "AI conversations" })
      yield* promise(() => panel.getByText("No AI requests from this session yet.").waitFor())
      // The session's agent asks; the panel shows the turn without a reload.
      const sessionToken = ProxyTokens.make({
        token: Redacted.make(token),
        verify: (t) => t === token
      }).mint({
        kind: "session",
        id: session.id
      })
      const status = yield* promise(() =>
        fetch(`${url}/proxy/fake/v1/messages`, {
          method: "POST",
          headers: {
            "x-api-key": sessionToken,
            "content-type": "application/json",
            "anthropic-version": "2023-06-01"
          },
          body: JSON.stringify({
            model: "claude-e2e-1",
            max_tokens: 16,
            messages: [{ role: "user", content: "Which platypus is the web test's?" }]
          })
        }).then((r) => r.status)
      )
      expect(status).toBe(200)
      yield* promise(() => panel.getByText("Which platypus is the web test's?").waitFor())
      yield* promise(() => panel.getByText("Hello world!").waitFor())
      // 12 in and 5 out at $3 and $15 a million.
      yield* promise(() => panel.getByText("$0.0001").first().waitFor())
      expect(yield* Web.unnamedControls(page)).toEqual([])
      expect(yield* Web.lowContrastText(page)).toEqual([])
      yield* Web.screenshot(page, "web-conversation")
      yield* rpc.Sessions.Close({ sessionId: session.id })
    })
  )

  it.scoped("on a phone-sized screen the key bar sends Ctrl-C to the shell", () =>
    Effect.gen(function* () {
      const ctx = yield* context({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true })
      const page = yield* loggedIn(ctx)
      yield* newSession(page, "e2e-phone")
      const keyBar = page.getByRole("toolbar", { name: "Terminal keys" })
      expect(yield* promise(() => keyBar.isVisible())).toBe(true)

      // ^C from the bar interrupts a foreground program; the shell answers again.
      yield* typeLine(page, "sleep 1000; echo not-interrupted")
      yield* promise(() => keyBar.getByRole("button", { name: "Control-C" }).tap())
      yield* typeLine(page, "echo after-$((1+1))")
      yield* Web.untilTerminal(page, /^after-2$/m)

      // Ctrl then a key on the phone's keyboard is that control key.
      yield* typeLine(page, "sleep 1000; echo not-interrupted")
      yield* promise(() => keyBar.getByRole("button", { name: "Control", exact: true }).tap())
      yield* promise(() => page.keyboard.type("c"))
      yield* typeLine(page, "echo after-$((2+1))")
      yield* Web.untilTerminal(page, /^after-3$/m)
      expect(yield* terminalText(page)).not.toMatch(/^not-interrupted$/m)
      yield* Web.screenshot(page, "web-phone")
    })
  )

  it.scoped(
    "every view: controls labelled, reachable by keyboard with a visible focus, text with enough contrast",
    () =>
      Effect.gen(function* () {
        const { rpc, workDir } = yield* WebEnv
        const session = yield* rpc.Sessions.Create({ command: "/bin/sh", cwd: workDir, name: "for-a11y" })
        yield* rpc.Jobs.Submit({ command: "echo for-a11y; echo oops >&2", shell: true, strategy: "stream" })
        const ctx = yield* context()
        const page = yield* loggedIn(ctx)
        const origin = new URL(page.url()).origin

        const views = [
          { hash: "#/sessions", ready: page.locator(`tr:has-text("for-a11y")`) },
          {
            hash: `#/sessions/${session.id}`,
            ready: page.locator('[data-testid="terminal"][data-attachments="1"]')
          },
          { hash: "#/jobs", ready: page.locator("tr[data-job]").first() },
          { hash: "#/events", ready: page.locator("tr[data-type]").first() }
        ]
        for (const view of views) {
          yield* promise(() => page.goto(`${origin}/${view.hash}`))
          yield* promise(() => view.ready.waitFor())
          expect({ view: view.hash, unnamed: yield* Web.unnamedControls(page) }).toEqual({
            view: view.hash,
            unnamed: []
          })
          expect({ view: view.hash, low: yield* Web.lowContrastText(page) }).toEqual({
            view: view.hash,
            low: []
          })
        }

        // The settings dialog, opened and closed from the keyboard.
        yield* promise(() => page.getByRole("button", { name: "Settings" }).focus())
        yield* promise(() => page.keyboard.press("Enter"))
        const dialog = page.getByRole("dialog")
        yield* promise(() => dialog.waitFor())
        expect(yield* Web.unnamedControls(page)).toEqual([])
        expect(yield* Web.lowContrastText(page)).toEqual([])
        yield* Web.screenshot(page, "web-settings")
        yield* promise(() => page.keyboard.press("Escape"))
        yield* promise(() => dialog.waitFor({ state: "hidden" }))

        // The job cockpit from the keyboard alone: every stop shows where the focus is, and the
        // command panel is reached, filled and run.
        yield* promise(() => page.goto(`${origin}/#/jobs`))
        yield* promise(() => page.reload())
        yield* promise(() => page.locator("tr[data-job]").first().waitFor())
        const stops = yield* Web.tabThrough(page, 11)
        expect(stops.filter((stop) => !stop.visible)).toEqual([])
        expect(stops.map((stop) => stop.label)).toEqual([
          "vibes home",
          "Sessions",
          "Jobs",
          "Workspaces",
          "Events",
          "Settings",
          "Log out",
          "command",
          expect.stringContaining("Local"),
          "cwd",
          "Run"
        ])
        yield* promise(() => page.getByRole("textbox", { name: "Command" }).focus())
        yield* promise(() => page.keyboard.type("echo typed-$((6*7))"))
        yield* promise(() => page.keyboard.press("Enter"))
        yield* promise(() => page.locator('.line.stdout:has-text("typed-42")').waitFor())
        yield* rpc.Sessions.Close({ sessionId: session.id })
      })
  )

  it.effect("the first load's JavaScript is at most 300 KB gzipped", () =>
    Effect.gen(function* () {
      const { webDir } = yield* WebEnv
      const index = fs.readFileSync(path.join(webDir, "index.html"), "utf8")
      const scripts = [...index.matchAll(/<(?:script|link)[^>]+(?:src|href)="\/(assets\/[^"]+\.js)"/g)].map(
        (m) => m[1] ?? ""
      )
      expect(scripts.length).toBeGreaterThan(0)
      const gzipped = scripts.reduce(
        (total, script) =>
          total + zlib.gzipSync(fs.readFileSync(path.join(webDir, script)), { level: 9 }).length,
        0
      )
      expect(gzipped).toBeLessThanOrEqual(300 * 1024)
    })
  )

  it.scoped("the job cockpit lists a job's artifacts with links that download them", () =>
    Effect.gen(function* () {
      const { rpc, url, workDir } = yield* WebEnv
      const dir = path.join(workDir, "artifacts-job")
      fs.mkdirSync(dir, { mode: 0o777 })
      fs.chmodSync(dir, 0o777)
      const outputs = yield* rpc.Jobs.Execute(
        JobSpec.make({
          command: "mkdir -p out && printf 'hello artifact' > out/hello.txt",
          shell: true,
          cwd: dir,
          artifacts: ["out/**"]
        })
      ).pipe(Stream.runCollect)
      const accepted = Chunk.toReadonlyArray(outputs)[0]
      if (accepted?._tag !== "JobAccepted") throw new Error("the job was not accepted")
      const ctx = yield* context({ acceptDownloads: true })
      const page = yield* loggedIn(ctx)
      yield* promise(() => page.goto(`${url}/#/jobs/${accepted.job.id}`))
      const link = page.getByTestId("artifacts").getByRole("link", { name: "out/hello.txt" })
      yield* promise(() => link.waitFor())
      const [download] = yield* promise(() => Promise.all([page.waitForEvent("download"), link.click()]))
      expect(download.suggestedFilename()).toBe("hello.txt")
      const saved = yield* promise(() => download.path())
      expect(fs.readFileSync(saved, "utf8")).toBe("hello artifact")
    })
  )
})
