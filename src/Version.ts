/**
 * The version of vibes, read from its package.json (found from this file, in src/ or dist/).
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

const find = (): string => {
  let dir = path.dirname(fileURLToPath(import.meta.url))
  for (let i = 0; i < 6; i++) {
    const candidate = path.join(dir, "package.json")
    if (fs.existsSync(candidate)) {
      const parsed: unknown = JSON.parse(fs.readFileSync(candidate, "utf8"))
      if (typeof parsed === "object" && parsed !== null && "name" in parsed && parsed.name === "vibes") {
        return "version" in parsed && typeof parsed.version === "string" ? parsed.version : "0.0.0"
      }
    }
    dir = path.dirname(dir)
  }
  return "0.0.0"
}

/** The running version of vibes. */
export const version: string = find()
