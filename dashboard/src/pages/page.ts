// A page of the dashboard.
import type { Scope } from '../state';

export interface Page {
  /** Its path (one of the control listener's page paths). */
  path: string;
  title: string;
  /** Fills `root` for `scope`; returns what stops its timers. */
  render(root: HTMLElement, scope: Scope): () => void;
}
