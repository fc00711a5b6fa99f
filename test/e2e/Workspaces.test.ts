/**
 * The workspace view in a real browser (Debian Chromium through playwright-core) against a real
 * `vibes serve` process: what an agent's worktree changed, and its files downloaded and uploaded.
 */
import * as crypto from "node:crypto"
import * as fs from "node:fs"
import * as path from "node:path"
import { expect, layer } from "@effect/vitest"
import { Context, Effect, Exit, Layer, Option, Redacted } from "effect"
import type { Browser, Page } from "playwright-core"
import * as Client from "../../rpc/Client.js"
import { CreateSession } from "../../rpc/Sessions.js"
import { AddWorkspace } from "../../rpc/Workspaces.js"
import { clientLayer, eventually, stopPtyHostAtEnd } from "../support/Attach.js"
import * as Web from "../support/Browser.js"
import { giveToPrograms, makeRepo } from "../support/GitRepo.js"
import * as TestDatabase from "../support/TestDatabase.js"
import { tempDir } from "../support/TempDir.js"
import * as Vibes from "../support/VibesProcess.js"

class WebEnv extends Context.Tag("test/WorkspacesWebEnv")<
  WebEnv,
  {
    readonly url: string
    readonly loginUrl: string
    readonly browser: Browser
    readonly rpc: Client.Client
    readonly serverLines: () => ReadonlyArray<string>
  }
>() {}

const EnvLive = Layer.scoped(
  WebEnv,
  Effect.gen(function* () {
    const webDir = yield* tempDir("vibes-web-")
    yield* Web.buildWeb(webDir)
    const dataDir = yield* tempDir("vibes-e2e-ws-")
    yield* stopPtyHostAtEnd(dataDir)
    const database = yield* TestDatabase.freshDatabase("vibes_e2e_ws")
    const env = Vibes.childEnv({ DATABASE_URL: Redacted.value(database.url), VIBES_WEB_DIR: webDir })
    const server = yield* Vibes.serve(dataDir, env)
    const token = fs.readFileSync(path.join(dataDir, "admin-token"), "utf8").trim()
    const rpc = yield* Effect.map(
      Layer.build(clientLayer(server.url, token)),
      Context.get(Client.VibesClient)
    )
    const browser = yield* Web.launch
    return { url: server.url, loginUrl: server.loginUrl, browser, rpc, serverLines: () => server.lines }
  })
)

const promise = <A>(f: () => Promise<A>) => Effect.promise(f)

/** A logged-in page; on failure its text and the server's last lines are printed. */
const loggedIn = Effect.gen(function* () {
  const { browser, loginUrl, url, serverLines } = yield* WebEnv
  const ctx = yield* Effect.acquireRelease(
    promise(() => browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true })),
    (ctx) => promise(() => ctx.close())
  )
  const page = yield* promise(() => ctx.newPage())
  yield* Effect.addFinalizer((exit) =>
    Exit.isFailure(exit)
      ? promise(() => page.evaluate(() => document.body.innerText).catch((e: unknown) => String(e))).pipe(
          Effect.flatMap((text) =>
            Effect.sync(() =>
              console.error(
                `the page showed:\n${text}\n\nthe server's last log lines:\n${serverLines().slice(-40).join("\n")}`
              )
            )
          )
        )
      : Effect.void
  )
  yield* promise(() => page.goto(loginUrl))
  yield* promise(() => page.waitForURL(`${url}/`))
  return page
})

const sha256 = (bytes: Buffer) => crypto.createHash("sha256").update(bytes).digest("hex")

/** Drops `name` with `content` on the element as a person dragging a file from the desktop would. */
const dropFile = (page: Page, selector: string, name: string, content: string) =>
  promise(() =>
    page.locator(selector).evaluate(
      (element, file) => {
        const transfer = new DataTransfer()
        transfer.items.add(new File([file.content], file.name, { type: "text/plain" }))
        element.dispatchEvent(
          new DragEvent("dragover", { dataTransfer: transfer, bubbles: true, cancelable: true })
        )
        element.dispatchEvent(
          new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true })
        )
      },
      { name, content }
    )
  )

layer(EnvLive, { timeout: 240_000, excludeTestServices: true })("workspace view in a real browser", (it) => {
  it.scoped(
    "an agent's worktree diff is shown highlighted, a file downloads byte-exact, a dropped file is uploaded",
    () =>
      Effect.gen(function* () {
        const { rpc, url } = yield* WebEnv
        const repo = yield* makeRepo({ "README.md": "hello\n", "src/app.ts": "export const a = 1\n" })
        const info = yield* rpc.Workspaces.Add(AddWorkspace.make({ path: repo.path, name: "webapp" }))
        const session = yield* rpc.Sessions.Create(
          CreateSession.make({ workspace: info.name, branch: "agent", command: "sleep", args: ["600"] })
        )
        const worktree = path.join(info.worktreesDir, "agent")
        fs.writeFileSync(
          path.join(worktree, "src/app.ts"),
          "export const a = 2\nexport function b() { return 'b' }\n"
        )
        fs.writeFileSync(path.join(worktree, "notes.md"), "# notes\n")
        const data = crypto.randomBytes(300 * 1024)
        fs.writeFileSync(path.join(worktree, "data.bin"), data)
        giveToPrograms(repo.root)

        const page = yield* loggedIn
        yield* promise(() => page.goto(`${url}/#/workspaces`))
        yield* promise(() => page.getByRole("link", { name: "webapp" }).click())
        yield* promise(() => page.getByRole("button", { name: "agent" }).click())
        yield* promise(() => page.getByText("worktree of agent:").waitFor())

        const diff = page.getByTestId("diff")
        yield* promise(() => diff.locator('[data-path="src/app.ts"]').waitFor())
        expect(yield* promise(() => page.getByTestId("diff-total").innerText())).toBe("3")
        const patch = diff.locator('[data-path="src/app.ts"] .patch')
        expect(yield* promise(() => patch.locator(".line.add").allInnerTexts())).toEqual([
          "+export const a = 2",
          "+export function b() { return 'b' }"
        ])
        expect(yield* promise(() => patch.locator(".line.del").allInnerTexts())).toEqual([
          "-export const a = 1"
        ])
        // Highlighted: the keywords of the TypeScript lines are marked up.
        expect(yield* promise(() => patch.locator(".line.add .hljs-keyword").count())).toBeGreaterThan(0)
        expect(yield* promise(() => diff.locator('[data-path="notes.md"]').innerText())).toContain(
          "new, untracked"
        )
        expect(yield* promise(() => diff.locator('[data-path="data.bin"]').innerText())).toContain("binary")
        yield* Web.screenshot(page, "web-workspace-diff")

        // The diff follows the worktree as the agent works.
        fs.writeFileSync(path.join(worktree, "later.txt"), "later\n")
        giveToPrograms(worktree)
        yield* promise(() => diff.locator('[data-path="later.txt"]').waitFor({ timeout: 30_000 }))

        yield* promise(() => page.getByRole("tab", { name: "Files" }).click())
        const files = page.getByTestId("files")
        const [download] = yield* promise(() =>
          Promise.all([
            page.waitForEvent("download"),
            files.getByRole("link", { name: "Download data.bin" }).click()
          ])
        )
        const saved = yield* promise(() => download.path())
        expect(download.suggestedFilename()).toBe("data.bin")
        expect(sha256(fs.readFileSync(saved))).toBe(sha256(data))

        yield* dropFile(page, '[data-testid="files"]', "dropped.txt", "dropped by a person\n")
        yield* promise(() => files.getByRole("button", { name: "dropped.txt" }).waitFor())
        const uploaded = yield* eventually(
          Effect.sync(() => {
            const target = path.join(worktree, "dropped.txt")
            return fs.existsSync(target) ? Option.some(fs.readFileSync(target, "utf8")) : Option.none()
          }),
          "the dropped file on disk"
        )
        expect(uploaded).toBe("dropped by a person\n")
        yield* promise(() => files.getByRole("button", { name: "src/" }).click())
        yield* promise(() => files.getByRole("button", { name: "app.ts" }).click())
        expect(yield* promise(() => page.getByTestId("file-preview").innerText())).toContain(
          "export function b()"
        )
        yield* rpc.Sessions.Close({ sessionId: session.id })
      })
  )
})
