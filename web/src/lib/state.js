/** What several pages share: the circles the token sees and the circle being looked at. */
import { signal } from '@preact/signals';
import { api } from './api.js';

export const circles = signal(null);
export const circlesError = signal(null);
/** The circle of the page (set by each page; the run page sets its run's circle). */
export const currentCircle = signal(null);

export async function loadCircles() {
  try {
    circlesError.value = null;
    circles.value = (await api('/api/circles')).circles;
  } catch (e) {
    circlesError.value = e;
  }
  return circles.value;
}
