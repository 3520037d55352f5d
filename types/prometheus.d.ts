// Hand-written declarations for parse-prometheus-text-format (a test dependency), which ships no types: only
// what the tests use.

declare module 'parse-prometheus-text-format' {
  export interface PromSample {
    value: string
    labels?: Record<string, string>
  }
  export interface PromFamily {
    name: string
    help: string
    type: string
    metrics: PromSample[]
  }
  export default function parsePrometheusTextFormat(text: string): PromFamily[]
}
