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

/** Controls in the page's accessibility tree that have no accessible name (from its ARIA snapshot). */
export const unnamedControls = (page: Page) =>
  Effect.promise(() => page.locator("body").ariaSnapshot()).pipe(
    Effect.map((snapshot) =>
      snapshot
        .split("\n")
        .map((line) => line.trim())
        .filter((line) =>
          /^- (button|textbox|combobox|checkbox|link|spinbutton|searchbox|slider)\s*(:|\[|$)/.test(line)
        )
    )
  )

/**
 * Text on the page whose contrast with the background behind it is below `minimum` (WCAG AA:
 * 4.5 for normal text), outside the terminal (whose colours are the program's) and disabled controls.
 */
export const lowContrastText = (page: Page, minimum = 4.5) =>
  Effect.promise(() =>
    page.evaluate((minimum) => {
      const parse = (colour: string): [number, number, number, number] => {
        const parts = colour.match(/[\d.]+/g)?.map(Number) ?? [0, 0, 0]
        return [parts[0] ?? 0, parts[1] ?? 0, parts[2] ?? 0, parts[3] ?? 1]
      }
      const luminance = ([r, g, b]: [number, number, number, number]) => {
        const channel = (c: number) => {
          const s = c / 255
          return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4
        }
        return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)
      }
      const background = (element: Element): [number, number, number, number] => {
        for (let node: Element | null = element; node !== null; node = node.parentElement) {
          const colour = parse(getComputedStyle(node).backgroundColor)
          if (colour[3] > 0.5) return colour
        }
        return [255, 255, 255, 1]
      }
      const failures: Array<string> = []
      for (const element of Array.from(document.querySelectorAll("body *"))) {
        if (element.closest(".xterm") !== null || element.closest(":disabled") !== null) continue
        const hasText = Array.from(element.childNodes).some(
          (node) => node.nodeType === Node.TEXT_NODE && (node.textContent ?? "").trim() !== ""
        )
        if (!hasText || !(element instanceof HTMLElement) || element.offsetParent === null) continue
        const fg = luminance(parse(getComputedStyle(element).color))
        const bg = luminance(background(element))
        const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05)
        if (ratio < minimum)
          failures.push(`${element.tagName} "${element.innerText.slice(0, 30)}" ${ratio.toFixed(2)}`)
      }
      return failures
    }, minimum)
  )

/**
 * Presses Tab up to `presses` times and reports each focused element: its accessible label (aria
 * label, text or name) and whether a focus indicator is drawn (an outline of at least 2 px).
 */
export const tabThrough = (page: Page, presses: number) =>
  Effect.promise(async () => {
    const stops: Array<{ readonly label: string; readonly visible: boolean }> = []
    for (let i = 0; i < presses; i++) {
      await page.keyboard.press("Tab")
      stops.push(
        await page.evaluate(() => {
          const element = document.activeElement
          if (!(element instanceof HTMLElement) || element === document.body)
            return { label: "", visible: false }
          const style = getComputedStyle(element)
          const label =
            element.getAttribute("aria-label") ??
            (element.innerText.trim() || element.getAttribute("name") || element.className)
          return { label, visible: style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2 }
        })
      )
    }
    return stops
  })
