/**
 * The price table: what a turn cost from its tokens, per provider and model, in US dollars. A
 * model matches an entry exactly or by a prefix ending in `*`; an entry naming the provider wins
 * over one that does not, then the longest pattern. A turn without a price costs null, not 0.
 */
import type { Price } from "../../rpc/Conversations.js"

/** Tokens to price: input without the cached part, as vibes keeps them. */
export interface Tokens {
  readonly inputTokens: number | null
  readonly outputTokens: number | null
  readonly cacheReadTokens: number | null
  readonly cacheWriteTokens: number | null
}

const matches = (pattern: string, model: string): boolean =>
  pattern.endsWith("*") ? model.startsWith(pattern.slice(0, -1)) : pattern === model

/** The entry that prices `model` of `provider`, if any. */
export const find = (table: ReadonlyArray<Price>, provider: string, model: string | null): Price | null => {
  if (model === null) return null
  let best: Price | null = null
  let bestScore = -1
  for (const price of table) {
    if (price.provider !== undefined && price.provider !== provider) continue
    if (!matches(price.model, model)) continue
    const score =
      (price.provider === undefined ? 0 : 1_000_000) +
      (price.model.endsWith("*") ? price.model.length : 500_000)
    if (score > bestScore) {
      best = price
      bestScore = score
    }
  }
  return best
}

/** The cost of `tokens` at `price`, in dollars (prices are per million tokens). */
export const cost = (price: Price, tokens: Tokens): number =>
  ((tokens.inputTokens ?? 0) * price.input +
    (tokens.outputTokens ?? 0) * price.output +
    (tokens.cacheReadTokens ?? 0) * price.cacheRead +
    (tokens.cacheWriteTokens ?? 0) * price.cacheWrite) /
  1_000_000

/** The cost of a turn, or null when the table has no price for its model or it reported no usage. */
export const costOf = (
  table: ReadonlyArray<Price>,
  provider: string,
  model: string | null,
  tokens: Tokens
): number | null => {
  const price = find(table, provider, model)
  if (price === null) return null
  if (tokens.inputTokens === null && tokens.outputTokens === null) return null
  return cost(price, tokens)
}
