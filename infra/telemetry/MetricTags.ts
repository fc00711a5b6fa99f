/** Tagged variants of Effect metrics, made once per combination of tags. */
import { Metric, MetricLabel } from "effect"

const taggedCache = new WeakMap<object, Map<string, unknown>>()

/**
 * `metric` with `tags`, made once per combination (its key, and the key's hash, are reused), for
 * hot paths that update it with `unsafeUpdate`. Callers keep the tag values to a bounded set.
 */
export const tagged = <Type, In, Out>(
  metric: Metric.Metric<Type, In, Out>,
  tags: Record<string, string>
): Metric.Metric<Type, In, Out> => {
  const byTags = taggedCache.get(metric) ?? new Map<string, unknown>()
  taggedCache.set(metric, byTags)
  const key = Object.values(tags).join("\0")
  const cached = byTags.get(key) as Metric.Metric<Type, In, Out> | undefined
  if (cached !== undefined) return cached
  const made = Metric.taggedWithLabels(
    metric,
    Object.entries(tags).map(([name, value]) => MetricLabel.make(name, value))
  )
  if (byTags.size < 10_000) byTags.set(key, made)
  return made
}
