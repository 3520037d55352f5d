// Hand-written declarations for the Holepunch modules, which ship no types. Only what branchmesh uses is
// declared; widen them here (and only here) when a new part of an API is needed.

declare module 'hypercore' {
  import { EventEmitter } from 'node:events'
  import type { Duplex } from 'node:stream'

  export interface GetOptions {
    wait?: boolean
    timeout?: number
    raw?: boolean
  }

  export interface DownloadRange {
    done(): Promise<void>
    destroy(): void
  }

  export interface PeerInfo {
    remotePublicKey: Buffer
    remoteLength: number
    remoteContiguousLength: number
  }

  export default class Hypercore extends EventEmitter {
    static MAX_SUGGESTED_BLOCK_SIZE: number
    static discoveryKey(key: Uint8Array): Buffer
    readonly key: Buffer
    readonly discoveryKey: Buffer
    readonly id: string
    readonly length: number
    readonly signedLength: number
    readonly contiguousLength: number
    readonly byteLength: number
    readonly fork: number
    readonly writable: boolean
    readonly readable: boolean
    readonly closed: boolean
    readonly opened: boolean
    readonly peers: PeerInfo[]
    ready(): Promise<void>
    close(opts?: { error?: Error }): Promise<void>
    append(blocks: Uint8Array | Uint8Array[]): Promise<{ length: number; byteLength: number }>
    get(index: number, opts?: GetOptions): Promise<Buffer | null>
    has(start: number, end?: number): Promise<boolean>
    update(opts?: { wait?: boolean; force?: boolean }): Promise<boolean>
    download(range?: { start?: number; end?: number; linear?: boolean; blocks?: number[] }): DownloadRange
    findingPeers(): () => void
    treeHash(length?: number): Promise<Buffer>
    info(opts?: { storage?: boolean }): Promise<{ length: number; contiguousLength: number; byteLength: number }>
    replicate(isInitiatorOrStream: boolean | Duplex, opts?: Record<string, unknown>): Duplex
    session(opts?: Record<string, unknown>): Hypercore
    clear(start: number, end?: number): Promise<void>
  }
}

declare module 'corestore' {
  import { EventEmitter } from 'node:events'
  import type { Duplex } from 'node:stream'
  import type Hypercore from 'hypercore'

  export interface CorestoreGetOptions {
    name?: string
    key?: Uint8Array
    exclusive?: boolean
    writable?: boolean
    active?: boolean
    wait?: boolean
    valueEncoding?: string
    /** Block encryption: blocks are encrypted before they are hashed, so peers without the key serve them. */
    encryption?: { key: Uint8Array; block?: boolean }
  }

  export interface RocksHandle {
    currentWalFile(): Promise<{ path: string; number: number; size: number }>
    flush(): Promise<void>
  }

  export default class Corestore extends EventEmitter {
    constructor(storage: string, opts?: { primaryKey?: Uint8Array; writable?: boolean; active?: boolean })
    readonly closed: boolean
    readonly opened: boolean
    readonly storage: { rocks: RocksHandle; close(): Promise<void> }
    ready(): Promise<void>
    close(): Promise<void>
    get(opts: CorestoreGetOptions | Uint8Array): Hypercore
    replicate(isInitiatorOrStream: boolean | Duplex, opts?: Record<string, unknown>): Duplex
    namespace(name: string): Corestore
    session(): Corestore
    watch(fn: (core: Hypercore) => void): void
    unwatch(fn: (core: Hypercore) => void): void
  }
}

declare module 'hyperdht' {
  import { EventEmitter } from 'node:events'

  export interface KeyPair {
    publicKey: Buffer
    secretKey: Buffer
  }

  export interface DHTOptions {
    bootstrap?: Array<string | { host: string; port: number }>
    host?: string
    port?: number
    ephemeral?: boolean
    firewalled?: boolean
    keyPair?: KeyPair
  }

  export default class DHT extends EventEmitter {
    constructor(opts?: DHTOptions)
    static keyPair(seed?: Uint8Array): KeyPair
    static bootstrapper(port: number, host: string, opts?: Record<string, unknown>): DHT
    readonly destroyed: boolean
    readonly bootstrapped: boolean
    /** False while the DHT hears nothing back (dht-rpc); 'network-update' is emitted when it changes. */
    readonly online: boolean
    ready(): Promise<void>
    fullyBootstrapped(): Promise<void>
    destroy(opts?: { force?: boolean }): Promise<void>
    address(): { host: string; port: number }
    connect(
      remotePublicKey: Uint8Array,
      opts?: { keyPair?: KeyPair }
    ): import('node:stream').Duplex & { remotePublicKey: Buffer }
  }
}

declare module 'hyperdht/testnet' {
  import type DHT from 'hyperdht'

  export interface Testnet {
    nodes: DHT[]
    bootstrap: Array<{ host: string; port: number }>
    createNode(opts?: Record<string, unknown>): DHT
    destroy(): Promise<void>
  }

  export default function createTestnet(
    size?: number,
    opts?: { host?: string; port?: number; teardown?: (fn: () => Promise<void>) => void }
  ): Promise<Testnet>
}

// The same file by its full name, as Node's ESM loader needs it (hyperdht has no `exports` map).
declare module 'hyperdht/testnet.js' {
  export * from 'hyperdht/testnet'
  export { default } from 'hyperdht/testnet'
}

declare module 'hyperswarm' {
  import { EventEmitter } from 'node:events'
  import type DHT from 'hyperdht'
  import type { KeyPair } from 'hyperdht'
  import type { Duplex } from 'node:stream'

  export interface PeerInfo {
    publicKey: Buffer
    topics: Buffer[]
    prioritized: boolean
    ban(banStatus?: boolean): void
  }

  export interface SwarmConnection extends Duplex {
    remotePublicKey: Buffer
    publicKey: Buffer
    rawStream?: { setNoDelay?(v: boolean): void }
  }

  export interface PeerDiscovery {
    flushed(): Promise<void>
    refresh(opts?: { client?: boolean; server?: boolean }): Promise<void>
    destroy(): Promise<void>
  }

  export default class Hyperswarm extends EventEmitter {
    constructor(opts?: {
      keyPair?: KeyPair
      seed?: Uint8Array
      maxPeers?: number
      firewall?: (remotePublicKey: Buffer, payload?: unknown) => boolean
      dht?: DHT
      /** Retry steps in ms (lib/retry-timer.js; default about 1 s, 5 s, 15 s, 10 min). */
      backoffs?: number[]
      jitter?: number
    })
    readonly keyPair: KeyPair
    readonly dht: DHT
    readonly connections: Set<SwarmConnection>
    readonly peers: Map<string, PeerInfo>
    readonly connecting: number
    join(topic: Uint8Array, opts?: { client?: boolean; server?: boolean }): PeerDiscovery
    leave(topic: Uint8Array): Promise<void>
    topics(): Iterable<PeerDiscovery>
    joinPeer(publicKey: Uint8Array): void
    leavePeer(publicKey: Uint8Array): void
    listen(): Promise<void>
    flush(): Promise<void>
    destroy(opts?: { force?: boolean }): Promise<void>
    on(event: 'connection', fn: (conn: SwarmConnection, info: PeerInfo) => void): this
    on(event: 'update', fn: () => void): this
    on(event: string, fn: (...args: any[]) => void): this
  }
}

declare module 'protomux' {
  import type { Duplex } from 'node:stream'

  export interface Encoding<T = any> {
    preencode(state: any, v: T): void
    encode(state: any, v: T): void
    decode(state: any): T
  }

  export interface Message<T = any> {
    send(m: T): boolean
  }

  export interface Channel {
    readonly opened: boolean
    readonly closed: boolean
    userData: unknown
    open(handshake?: unknown): void
    close(): void
    addMessage<T>(opts: { encoding: Encoding<T>; onmessage: (m: T, channel: Channel) => void }): Message<T>
  }

  export default class Protomux {
    static from(stream: Duplex, opts?: Record<string, unknown>): Protomux
    readonly stream: Duplex
    createChannel(opts: {
      protocol: string
      id?: Uint8Array | null
      unique?: boolean
      handshake?: Encoding
      messages?: Array<{ encoding: Encoding; onmessage: (m: any, channel: Channel) => void }>
      onopen?: (handshake: any, channel: Channel) => void | Promise<void>
      onclose?: (isRemote: boolean, channel: Channel) => void
      ondestroy?: () => void
      userData?: unknown
    }): Channel | null
    pair(opts: { protocol: string; id?: Uint8Array | null }, notify: (id: Uint8Array | null) => void): void
    unpair(opts: { protocol: string; id?: Uint8Array | null }): void
  }
}

declare module 'hypercore-crypto' {
  export function keyPair(seed?: Uint8Array): { publicKey: Buffer; secretKey: Buffer }
  export function discoveryKey(key: Uint8Array): Buffer
  export function randomBytes(n: number): Buffer
  export function hash(data: Uint8Array | Uint8Array[]): Buffer
  export function sign(message: Uint8Array, secretKey: Uint8Array): Buffer
  export function verify(message: Uint8Array, signature: Uint8Array, publicKey: Uint8Array): boolean
  const crypto: {
    keyPair: typeof keyPair
    discoveryKey: typeof discoveryKey
    randomBytes: typeof randomBytes
    hash: typeof hash
    sign: typeof sign
    verify: typeof verify
  }
  export default crypto
}
