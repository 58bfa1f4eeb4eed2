package org.autoglm.engine;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import org.junit.Test;

public class SamplerTest {
  @Test
  public void greedyTakesTheFirstMaximum() {
    float[] logits = {0f, 3f, 3f, -1f};
    assertEquals(1, new Sampler(SamplingConfig.greedy()).sample(logits, 0, 4));
  }

  @Test
  public void greedyReadsTheGivenRow() {
    float[] rows = {9f, 0f, 0f, 0f, 1f, 0f};
    assertEquals(1, new Sampler(SamplingConfig.greedy()).sample(rows, 3, 3));
  }

  @Test
  public void topPKeepsTheSmallestPrefixReachingTheMass() {
    double[] kept = Sampler.nucleus(new double[] {0.1, 0.5, 0.3, 0.1}, 0.7);
    assertEquals(0.0, kept[0], 0);
    assertEquals(0.5 / 0.8, kept[1], 1e-12);
    assertEquals(0.3 / 0.8, kept[2], 1e-12);
    assertEquals(0.0, kept[3], 0);
  }

  @Test
  public void samplingStaysInsideTheNucleus() {
    float[] logits = {5f, 4.9f, -10f, -10f};
    Sampler s = new Sampler(new SamplingConfig(1.0f, 0.9f, 7));
    int[] counts = new int[4];
    for (int i = 0; i < 2000; i++) {
      counts[s.sample(logits, 0, 4)]++;
    }
    assertEquals(0, counts[2] + counts[3]);
    assertTrue("both nucleus tokens drawn", counts[0] > 700 && counts[1] > 700);
  }

  @Test
  public void lowTemperatureIsNearlyGreedy() {
    float[] logits = {1f, 2f, 0f};
    Sampler s = new Sampler(new SamplingConfig(0.01f, 1f, 3));
    for (int i = 0; i < 100; i++) {
      assertEquals(1, s.sample(logits, 0, 3));
    }
  }

  @Test(expected = EngineException.class)
  public void rejectsTopPOutOfRange() {
    new SamplingConfig(1f, 0f, 0);
  }
}
