/** Protomux channel messages added from one table, in slot order, with a typed handler per message. */
import type { Channel, Encoding, Message } from 'protomux'

interface Slot<N extends string> {
  name: N
  encoding: unknown
}

/** The channel's messages, in the table's order; `send(name, m)` picks the slot by name. */
export interface Messages<P> {
  send<K extends keyof P>(name: K, m: P[K]): void
}

/**
 * Adds every message of `table` to `channel` in order (the slot is the index), calling `handlers[name]` for
 * each one received. A message without a handler here is still added, so that the slots stay in line.
 */
export function addMessages<P>(
  channel: Channel,
  table: ReadonlyArray<Slot<keyof P & string>>,
  handlers: { [K in keyof P]?: (m: P[K]) => void }
): Messages<P> {
  const byName = new Map<string, Message<unknown>>()
  for (const slot of table) {
    const on = handlers[slot.name] as ((m: unknown) => void) | undefined
    byName.set(
      slot.name,
      channel.addMessage({ encoding: slot.encoding as Encoding, onmessage: (m: unknown) => on?.(m) })
    )
  }
  return {
    send(name, m) {
      byName.get(name as string)!.send(m)
    }
  }
}
