/** `emlens/demo`: the quick-start job (`emlens demo`) as a library function, over the synthetic organisms. */
export { DEMO_RANDOM_CONTROLS, type DemoOptions, runDemo } from './em.js';
