package org.autoglm.engine;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import org.junit.Test;

public class WavReaderTest {
  private static byte[] wav(int tag, int channels, int rate, int bits, byte[] data) {
    int align = channels * bits / 8;
    ByteBuffer b = ByteBuffer.allocate(44 + data.length).order(ByteOrder.LITTLE_ENDIAN);
    b.put("RIFF".getBytes()).putInt(36 + data.length).put("WAVE".getBytes());
    b.put("fmt ".getBytes()).putInt(16).putShort((short) tag).putShort((short) channels);
    b.putInt(rate).putInt(rate * align).putShort((short) align).putShort((short) bits);
    b.put("data".getBytes()).putInt(data.length).put(data);
    return b.array();
  }

  @Test
  public void stereo24BitIsAveragedToMono() {
    // frame 0: L = 2^22 (0.5), R = -2^22 (-0.5); frame 1: L = R = 2^23 - 1 (~1.0)
    byte[] d = {0, 0, 0x40, 0, 0, (byte) 0xC0, (byte) 0xFF, (byte) 0xFF, 0x7F, (byte) 0xFF, (byte) 0xFF, 0x7F};
    WavReader.Audio a = WavReader.read(wav(1, 2, 44100, 24, d), "t.wav");
    assertEquals(44100, a.sampleRate);
    assertEquals(2, a.samples.length);
    assertEquals(0.0f, a.samples[0], 0);
    assertEquals((float) ((1 << 23) - 1) / (1 << 23), a.samples[1], 1e-7);
  }

  @Test
  public void eightBitIsUnsigned() {
    WavReader.Audio a = WavReader.read(wav(1, 1, 8000, 8, new byte[] {(byte) 128, 0}), "t.wav");
    assertEquals(0.0f, a.samples[0], 0);
    assertEquals(-1.0f, a.samples[1], 0);
  }

  @Test
  public void float32Samples() {
    byte[] d = ByteBuffer.allocate(4).order(ByteOrder.LITTLE_ENDIAN).putFloat(0.25f).array();
    assertEquals(0.25f, WavReader.read(wav(3, 1, 16000, 32, d), "t.wav").samples[0], 0);
  }

  @Test
  public void errorsNameTheFileInOneLine() {
    try {
      WavReader.read("not a wav file at all".getBytes(), "note.m4a");
      fail();
    } catch (EngineException e) {
      assertTrue(e.getMessage(), e.getMessage().startsWith("cannot read audio file note.m4a: not a WAV"));
      assertTrue(!e.getMessage().contains("\n"));
    }
  }

  @Test(expected = EngineException.class)
  public void refusesRatesOutsideTheRange() {
    WavReader.read(wav(1, 1, 4000, 16, new byte[] {0, 0}), "t.wav");
  }
}
