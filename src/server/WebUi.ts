/**
 * The built web UI (`dist/web`, made by `vite build`): loaded into memory when the node starts,
 * served at `/` and `/assets/…` to a logged-in browser, gzipped when the browser accepts it.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import * as zlib from "node:zlib"
import { fileURLToPath } from "node:url"
import { Option } from "effect"

/** One file of the UI, ready to send. */
export interface Asset {
  readonly contentType: string
  readonly body: Uint8Array
  /** The gzipped body, when compressing it is worth it. */
  readonly gzip: Option.Option<Uint8Array>
  /** Hashed file names never change: browsers may keep them. */
  readonly immutable: boolean
}

/** The UI: its page and its assets by URL path, or why there is none. */
export type WebUi =
  | { readonly _tag: "Built"; readonly dir: string; readonly assets: ReadonlyMap<string, Asset> }
  | { readonly _tag: "Missing"; readonly reason: string }

const contentTypes: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".woff2": "font/woff2",
  ".json": "application/json",
  ".webmanifest": "application/manifest+json",
  ".txt": "text/plain; charset=utf-8"
}

const compressible = new Set([".html", ".js", ".css", ".svg", ".json", ".webmanifest", ".txt"])

/** The package's root: the nearest directory above this module with a package.json. */
const packageRoot = (): string => {
  let dir = path.dirname(fileURLToPath(import.meta.url))
  while (!fs.existsSync(path.join(dir, "package.json"))) {
    const parent = path.dirname(dir)
    if (parent === dir) return process.cwd()
    dir = parent
  }
  return dir
}

/** Where the built UI is by default: `<package>/dist/web`. */
export const defaultDir = (): string => path.join(packageRoot(), "dist", "web")

const load = (file: string, urlPath: string): Asset => {
  const ext = path.extname(file).toLowerCase()
  const body = fs.readFileSync(file)
  return {
    contentType: contentTypes[ext] ?? "application/octet-stream",
    body,
    gzip:
      compressible.has(ext) && body.length > 512
        ? Option.some(zlib.gzipSync(body, { level: 9 }))
        : Option.none(),
    immutable: urlPath.startsWith("/assets/")
  }
}

/** Reads the UI in `dir` (every file, `index.html` as `/`). */
export const read = (dir: string): WebUi => {
  if (!fs.existsSync(path.join(dir, "index.html"))) {
    return {
      _tag: "Missing",
      reason: `the web UI is not built (no ${path.join(dir, "index.html")}): run npm run build`
    }
  }
  const assets = new Map<string, Asset>()
  const walk = (sub: string) => {
    for (const entry of fs.readdirSync(path.join(dir, sub), { withFileTypes: true })) {
      const relative = sub === "" ? entry.name : `${sub}/${entry.name}`
      if (entry.isDirectory()) walk(relative)
      else if (entry.isFile()) {
        const urlPath = relative === "index.html" ? "/" : `/${relative}`
        assets.set(urlPath, load(path.join(dir, relative), urlPath))
      }
    }
  }
  walk("")
  return { _tag: "Built", dir, assets }
}

/** True when an `accept-encoding` header allows gzip (`gzip`, `*`, without `q=0`). */
export const acceptsGzip = (header: string | undefined): boolean =>
  header !== undefined &&
  header.split(",").some((part) => {
    const [coding = "", ...params] = part.split(";").map((s) => s.trim().toLowerCase())
    const q = params.find((p) => p.startsWith("q="))
    return (coding === "gzip" || coding === "*") && (q === undefined || Number(q.slice(2)) > 0)
  })
