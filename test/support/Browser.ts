/**
 * A real browser for the end-to-end tests: Debian's Chromium driven by playwright-core, and the
 * web UI built from the sources (so a test never runs against a stale build).
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { Effect } from "effect"
import { chromium, type Browser, type Page } from "playwright-core"
import { build } from "vite"

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..")

/** Where the screenshots for a person to look at go. */
export const screenshotDir = path.join(root, "test-results")

/** Debian's Chromium (`apt-get install -y chromium`); `npx playwright install` cannot work here. */
export const chromiumPath = process.env["VIBES_TEST_CHROMIUM"] ?? "/usr/bin/chromium"

/** Builds the web UI from web/ into `outDir`. */
export const buildWeb = (outDir: string) =>
  Effect.promise(() =>
    build({
      configFile: path.join(root, "web", "vite.config.ts"),
      logLevel: "warn",
      build: { outDir, emptyOutDir: true }
    })
  ).pipe(Effect.asVoid)

/** A headless Chromium for the life of the scope (playwright gives it a fresh profile directory). */
export const launch = Effect.acquireRelease(
  Effect.promise((): Promise<Browser> => {
    if (!fs.existsSync(chromiumPath)) {
      return Promise.reject(new Error(`no Chromium at ${chromiumPath}: apt-get install -y chromium`))
    }
    return chromium.launch({
      executablePath: chromiumPath,
      headless: true,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run"
      ]
    })
  }),
  (browser) => Effect.promise(() => browser.close())
)

/** Saves a screenshot of the page as test-results/<name>.png. */
export const screenshot = (page: Page, name: string) =>
  Effect.promise(async () => {
    fs.mkdirSync(screenshotDir, { recursive: true })
    await page.screenshot({ path: path.join(screenshotDir, `${name}.png`), fullPage: false })
  })

/** The text xterm.js shows on the page (its DOM renderer's rows). */
export const terminalText = (page: Page) =>
  Effect.promise(() => page.locator(".xterm-rows").innerText()).pipe(
    Effect.map((text) => text.replace(/\u00a0/g, " ").replace(/ +$/gm, ""))
  )

/** Waits until the terminal on the page shows text matching `pattern`. */
export const untilTerminal = (page: Page, pattern: RegExp, timeout = 30_000) =>
  Effect.promise(() =>
    page.waitForFunction(
      ({ source, flags }) =>
        new RegExp(source, flags).test(
          ((document.querySelector(".xterm-rows") as HTMLElement | null)?.innerText ?? "")
            .replace(/\u00a0/g, " ")
            .replace(/ +$/gm, "")
        ),
      { source: pattern.source, flags: pattern.flags },
      { timeout, polling: 50 }
    )
  ).pipe(Effect.asVoid)
