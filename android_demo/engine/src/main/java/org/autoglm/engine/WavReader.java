package org.autoglm.engine;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/**
 * WAV bytes to mono float samples (runtime preprocess/audio.py load_wav): 8/16/24/32-bit PCM and
 * 32/64-bit float, plain or WAVE_FORMAT_EXTENSIBLE, any channel count averaged to mono.
 */
public final class WavReader {
  /** Mono samples in [-1, 1] and their rate. */
  public static final class Audio {
    public final float[] samples;
    public final int sampleRate;

    Audio(float[] samples, int sampleRate) {
      this.samples = samples;
      this.sampleRate = sampleRate;
    }
  }

  private static final int PCM = 0x0001;
  private static final int FLOAT = 0x0003;
  private static final int EXTENSIBLE = 0xFFFE;

  private WavReader() {}

  public static Audio read(byte[] data, String name) {
    ByteBuffer b = ByteBuffer.wrap(data).order(ByteOrder.LITTLE_ENDIAN);
    if (data.length < 12 || b.getInt(0) != 0x46464952 || b.getInt(8) != 0x45564157) {
      throw fail(name, "not a WAV file (no RIFF/WAVE header)");
    }
    int tag = -1;
    int channels = 0;
    int rate = 0;
    int align = 0;
    int bits = 0;
    int pos = 12;
    while (pos + 8 <= data.length) {
      int id = b.getInt(pos);
      long size = b.getInt(pos + 4) & 0xffffffffL;
      int body = pos + 8;
      if (id == 0x20746d66) { // "fmt "
        if (size < 16 || body + 16 > data.length) {
          throw fail(name, "truncated fmt chunk");
        }
        tag = b.getShort(body) & 0xffff;
        channels = b.getShort(body + 2) & 0xffff;
        rate = b.getInt(body + 4);
        align = b.getShort(body + 12) & 0xffff;
        bits = b.getShort(body + 14) & 0xffff;
        if (tag == EXTENSIBLE) {
          if (size < 40 || body + 26 > data.length) {
            throw fail(name, "truncated WAVE_FORMAT_EXTENSIBLE fmt chunk");
          }
          tag = b.getShort(body + 24) & 0xffff;
        }
      } else if (id == 0x61746164) { // "data"
        if (tag < 0) {
          throw fail(name, "data chunk before fmt chunk");
        }
        if (size == 0xffffffffL) { // writers that never finalised the header: data runs to EOF
          size = data.length - body;
        }
        if (body + size > data.length) {
          throw fail(name, "truncated: header declares " + size + " bytes of audio but only "
              + (data.length - body) + " remain");
        }
        return decode(b, body, (int) size, tag, channels, rate, align, bits, name);
      }
      pos = (int) Math.min(Integer.MAX_VALUE, body + size + (size & 1));
    }
    throw fail(name, tag < 0 ? "no fmt chunk" : "no data chunk (truncated?)");
  }

  private static Audio decode(
      ByteBuffer b, int off, int size, int tag, int ch, int rate, int align, int bits, String name) {
    if (tag != PCM && tag != FLOAT) {
      throw fail(name, String.format("unsupported encoding (format tag 0x%04X)", tag));
    }
    int width = bits / 8;
    if (ch < 1 || bits % 8 != 0 || align != ch * width) {
      throw fail(name, "inconsistent fmt chunk (" + ch + " channels, " + bits + " bits)");
    }
    if (rate < AudioPreprocessor.MIN_RATE || rate > AudioPreprocessor.MAX_RATE) {
      throw fail(name, "sample rate " + rate + " Hz is outside the supported 8000-192000 Hz");
    }
    boolean ok = (tag == PCM && width >= 1 && width <= 4) || (tag == FLOAT && (width == 4 || width == 8));
    if (!ok) {
      throw fail(name, "unsupported " + bits + "-bit " + (tag == PCM ? "PCM" : "float") + " samples");
    }
    int frames = size / align; // a partial trailing frame (cut-off recording) is dropped
    if (frames == 0) {
      throw fail(name, "contains no audio samples");
    }
    float[] mono = new float[frames];
    for (int f = 0; f < frames; f++) {
      float acc = 0;
      for (int c = 0; c < ch; c++) {
        int p = off + f * align + c * width;
        float v = sample(b, p, tag, width);
        if (Float.isNaN(v) || Float.isInfinite(v)) {
          throw fail(name, "float samples contain NaN or infinity");
        }
        acc += v;
      }
      mono[f] = acc / ch;
    }
    return new Audio(mono, rate);
  }

  private static float sample(ByteBuffer b, int p, int tag, int width) {
    if (tag == FLOAT) {
      return width == 4 ? b.getFloat(p) : (float) b.getDouble(p);
    }
    switch (width) {
      case 1:
        return ((b.get(p) & 0xff) - 128f) / 128f;
      case 2:
        return b.getShort(p) / 32768f;
      case 3:
        int v = (b.get(p) & 0xff) << 8 | (b.get(p + 1) & 0xff) << 16 | b.get(p + 2) << 24;
        return (v >> 8) / 8388608f;
      default:
        return (float) (b.getInt(p) / 2147483648.0);
    }
  }

  private static EngineException fail(String name, String problem) {
    return new EngineException("cannot read audio file " + name + ": " + problem);
  }
}
