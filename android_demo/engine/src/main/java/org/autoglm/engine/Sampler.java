package org.autoglm.engine;

import java.util.Arrays;
import java.util.Comparator;
import java.util.Random;

/**
 * Next-token choice (runtime sampling.py): argmax when greedy; else softmax(logits / T), cut to the
 * smallest set of most likely tokens whose mass reaches top_p, and a draw. The draw uses
 * java.util.Random, so sampled (not greedy) tokens differ from the Python runtime's numpy draws.
 */
public final class Sampler {
  private final SamplingConfig config;
  private final Random rng;

  public Sampler(SamplingConfig config) {
    this.config = config;
    this.rng = new Random(config.seed);
  }

  /** logits[offset .. offset + vocab) to a token id. */
  public int sample(float[] logits, int offset, int vocab) {
    if (config.temperature == 0) {
      return argmax(logits, offset, vocab);
    }
    double max = Double.NEGATIVE_INFINITY;
    for (int i = 0; i < vocab; i++) {
      max = Math.max(max, logits[offset + i] / (double) config.temperature);
    }
    double[] probs = new double[vocab];
    double sum = 0;
    for (int i = 0; i < vocab; i++) {
      probs[i] = Math.exp(logits[offset + i] / (double) config.temperature - max);
      sum += probs[i];
    }
    for (int i = 0; i < vocab; i++) {
      probs[i] /= sum;
    }
    if (config.topP < 1.0f) {
      probs = nucleus(probs, config.topP);
    }
    double u = rng.nextDouble();
    double acc = 0;
    int last = 0;
    for (int i = 0; i < vocab; i++) {
      if (probs[i] > 0) {
        acc += probs[i];
        last = i;
        if (u < acc) {
          return i;
        }
      }
    }
    return last; // rounding left u above the total mass
  }

  /** Keeps the smallest prefix (by probability) whose mass reaches topP, renormalised. */
  static double[] nucleus(double[] probs, double topP) {
    Integer[] order = new Integer[probs.length];
    for (int i = 0; i < order.length; i++) {
      order[i] = i;
    }
    // Stable sort by descending probability: ties keep the lower id first, as numpy's stable argsort.
    Arrays.sort(order, Comparator.comparingDouble((Integer i) -> -probs[i]));
    double[] kept = new double[probs.length];
    double cumulative = 0;
    double mass = 0;
    for (Integer i : order) {
      cumulative += probs[i];
      kept[i] = probs[i];
      mass += probs[i];
      if (cumulative >= topP) {
        break;
      }
    }
    for (int i = 0; i < kept.length; i++) {
      kept[i] /= mass;
    }
    return kept;
  }

  static int argmax(float[] logits, int offset, int vocab) {
    int best = 0;
    for (int i = 1; i < vocab; i++) {
      if (logits[offset + i] > logits[offset + best]) {
        best = i;
      }
    }
    return best;
  }
}
