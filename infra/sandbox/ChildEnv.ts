/**
 * What a session's or job's program may see of the server: its environment without the server's
 * secrets, and its output with any secret the server holds replaced by `[redacted]` before it is
 * written to the job log or an event.
 */

/** Variables of the server's environment that never reach a child, by name. */
const serverOnly = /^(VIBES_|DATABASE_URL$|PG[A-Z]|OTEL_|NATS_)/

/** Provider key variables no child gets even when the proxy does not use them. */
export const providerKeyVariables: ReadonlyArray<string> = [
  "ANTHROPIC_API_KEY",
  "ANTHROPIC_AUTH_TOKEN",
  "OPENAI_API_KEY",
  "GEMINI_API_KEY",
  "GOOGLE_API_KEY",
  "MISTRAL_API_KEY",
  "GROQ_API_KEY",
  "XAI_API_KEY",
  "DEEPSEEK_API_KEY",
  "OPENROUTER_API_KEY",
  "AWS_SECRET_ACCESS_KEY",
  "AWS_SESSION_TOKEN"
]

/** Secret values shorter than this are not matched (they would match ordinary text). */
export const minSecretLength = 8

/** The text that stands for a secret in output and events. */
export const placeholder = "[redacted]"

/** The secrets a server holds: the values no child may see, and the variables that carry them. */
export interface Secrets {
  /** Variables dropped by name, on top of the server's own (`VIBES_*`, `DATABASE_URL`, …). */
  readonly variables: ReadonlySet<string>
  /** Values dropped wherever they appear (at least `minSecretLength` characters each). */
  readonly values: ReadonlyArray<string>
}

/** The secrets of `values` (short and empty ones left out) and `variables`. */
export const secrets = (options: {
  readonly variables?: Iterable<string>
  readonly values: Iterable<string | undefined>
}): Secrets => {
  const values = new Set<string>()
  for (const value of options.values) {
    const trimmed = value?.trim()
    if (trimmed !== undefined && trimmed.length >= minSecretLength) values.add(trimmed)
  }
  return {
    variables: new Set([...providerKeyVariables, ...(options.variables ?? [])]),
    values: [...values].sort((a, b) => b.length - a.length)
  }
}

/** True when `value` contains one of the secret values. */
const carriesSecret = (secrets: Secrets, value: string): boolean =>
  secrets.values.some((secret) => value.includes(secret))

/**
 * A child's environment from the server's: without the server's own variables, the secret
 * variables, and any entry whose value contains a secret.
 */
export const childEnv = (
  secrets: Secrets,
  env: Readonly<Record<string, string | undefined>> = process.env
): Record<string, string> => {
  const out: Record<string, string> = {}
  for (const [name, value] of Object.entries(env)) {
    if (value === undefined || serverOnly.test(name) || secrets.variables.has(name)) continue
    if (carriesSecret(secrets, value)) continue
    out[name] = value
  }
  return out
}

/** `text` with every secret value replaced by `[redacted]`. */
export const redact = (secrets: Secrets, text: string): string => {
  let out = text
  for (const secret of secrets.values) {
    if (out.includes(secret)) out = out.split(secret).join(placeholder)
  }
  return out
}

/**
 * Redacts a stream of text handed over in pieces, where a secret may be cut between two pieces.
 * A piece that ends in the first `holdFrom` or more characters of a secret keeps them back
 * until the next piece (or `end`); a secret whose first characters went out in the piece before
 * (fewer than `holdFrom`, so ordinary text is never held) has the rest replaced.
 */
export interface StreamRedactor {
  /** The text to pass on for the next piece. */
  readonly push: (text: string) => string
  /** What was held back, at the end of the stream. */
  readonly end: () => string
}

/** Characters of a secret's beginning after which a piece's end is held back. */
export const holdFrom = 4

/** A redactor for one stream of text. */
export const streamRedactor = (secrets: Secrets): StreamRedactor => {
  const values = secrets.values
  if (values.length === 0) return { push: (text) => text, end: () => "" }
  const longest = values[0]?.length ?? 0
  /** Raw text already passed on, its last `longest - 1` characters. */
  let tail = ""
  /** Raw text held back. */
  let held = ""

  /** The longest `k` (< secret length) such that `text` ends with the first `k` characters of a secret. */
  const openPrefix = (text: string, min: number): number => {
    let best = 0
    for (const secret of values) {
      for (let k = Math.min(secret.length - 1, text.length); k > best && k >= min; k--) {
        if (text.endsWith(secret.slice(0, k))) {
          best = k
          break
        }
      }
    }
    return best
  }

  const push = (text: string): string => {
    const input = held + text
    held = ""
    let out = ""
    let pos = 0
    // A secret whose beginning already went out: replace what is left of it.
    for (const secret of values) {
      const started = Math.min(secret.length - 1, tail.length)
      let done = false
      for (let k = started; k >= 1; k--) {
        if (tail.endsWith(secret.slice(0, k)) && input.startsWith(secret.slice(k))) {
          out = placeholder
          pos = secret.length - k
          done = true
          break
        }
      }
      if (done) break
    }
    const rest = input.slice(pos)
    const keep = openPrefix(rest, holdFrom)
    const passed = rest.slice(0, rest.length - keep)
    held = rest.slice(rest.length - keep)
    out += redact(secrets, passed)
    tail = (tail + input.slice(0, pos) + passed).slice(-Math.max(0, longest - 1))
    return out
  }

  const end = (): string => {
    const rest = held
    held = ""
    tail = ""
    return redact(secrets, rest)
  }

  return { push, end }
}
