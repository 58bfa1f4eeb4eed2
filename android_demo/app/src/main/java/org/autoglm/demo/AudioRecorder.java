package org.autoglm.demo;

import android.annotation.SuppressLint;
import android.media.AudioFormat;
import android.media.AudioRecord;
import android.media.MediaRecorder;
import java.util.Arrays;

/** Records 16 kHz mono 16-bit PCM (the audio tower's rate) on a background thread. */
final class AudioRecorder {
  static final int SAMPLE_RATE = 16000;
  private static final int MAX_SECONDS = 30;

  private AudioRecord record;
  private Thread thread;
  private volatile boolean running;
  private short[] buffer = new short[0];
  private int length;

  @SuppressLint("MissingPermission") // MainActivity asks for RECORD_AUDIO before calling start()
  void start() {
    int min = AudioRecord.getMinBufferSize(SAMPLE_RATE, AudioFormat.CHANNEL_IN_MONO, AudioFormat.ENCODING_PCM_16BIT);
    record = new AudioRecord(MediaRecorder.AudioSource.MIC, SAMPLE_RATE, AudioFormat.CHANNEL_IN_MONO,
        AudioFormat.ENCODING_PCM_16BIT, Math.max(min, SAMPLE_RATE));
    buffer = new short[SAMPLE_RATE * MAX_SECONDS];
    length = 0;
    running = true;
    record.startRecording();
    thread = new Thread(() -> {
      while (running && length < buffer.length) {
        int n = record.read(buffer, length, Math.min(1024, buffer.length - length));
        if (n > 0) {
          length += n;
        }
      }
    }, "audio-recorder");
    thread.start();
  }

  /** Stops and returns the samples as floats in [-1, 1]. */
  float[] stop() throws InterruptedException {
    running = false;
    thread.join();
    record.stop();
    record.release();
    short[] pcm = Arrays.copyOf(buffer, length);
    float[] out = new float[pcm.length];
    for (int i = 0; i < pcm.length; i++) {
      out[i] = pcm[i] / 32768f; // the runtime's int16 scaling (load_wav)
    }
    return out;
  }
}
