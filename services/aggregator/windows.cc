#include "services/aggregator/windows.h"

#include "absl/time/civil_time.h"

namespace tokenmeter::aggregator {
namespace {

// A half-open interval [start, end) of time.
struct Window {
  absl::Time start;
  absl::Time end;
};

// Returns the instant of `trans` (absl's documented idiom: the discontinuity of its `to` time).
absl::Time TransitionInstant(const absl::TimeZone::CivilTransition& trans,
                             const absl::TimeZone& tz) {
  return tz.At(trans.to).trans;
}

// Returns the latest instant in (after, t] at which tz's UTC offset changes, or `after` if there
// is none. Transitions that change only the abbreviation (from == to) are skipped.
absl::Time LastOffsetChangeIn(absl::Time after, absl::Time t, const absl::TimeZone& tz) {
  absl::TimeZone::CivilTransition trans;
  // PrevTransition finds transitions strictly before the whole second of its argument, and
  // transitions are second-aligned, so probing at t + 1 s includes a transition at exactly t.
  absl::Time probe = t + absl::Seconds(1);
  while (tz.PrevTransition(probe, &trans)) {
    const absl::Time at = TransitionInstant(trans, tz);
    if (at <= after) break;
    if (trans.from != trans.to) return at;
    probe = at;
  }
  return after;
}

// Returns the earliest instant in (t, before) at which tz's UTC offset changes, or `before` if
// there is none.
absl::Time FirstOffsetChangeIn(absl::Time t, absl::Time before, const absl::TimeZone& tz) {
  absl::TimeZone::CivilTransition trans;
  absl::Time probe = t;
  while (tz.NextTransition(probe, &trans)) {
    const absl::Time at = TransitionInstant(trans, tz);
    if (at >= before) break;
    if (trans.from != trans.to) return at;
    probe = at;
  }
  return before;
}

// The local hour is found by subtracting the local minutes and seconds from t rather than by
// converting the civil hour back to an instant, so the two passes through a repeated hour at a
// DST fall-back stay two windows. An offset change inside the local hour (Australia/Lord_Howe's
// 30-minute DST, odd historical offsets) ends one window and starts the next, so hour windows
// always partition time; such a window is shorter than an hour.
Window HourWindow(absl::Time t, const absl::TimeZone& tz) {
  const absl::TimeZone::CivilInfo local = tz.At(t);
  const absl::Time hour_start =
      t - absl::Minutes(local.cs.minute()) - absl::Seconds(local.cs.second()) - local.subsecond;
  const absl::Time hour_end = hour_start + absl::Hours(1);
  return {LastOffsetChangeIn(hour_start, t, tz), FirstOffsetChangeIn(t, hour_end, tz)};
}

// Returns the first instant whose local time in tz is at or after `local`. If `local` was
// skipped by a DST jump (e.g. America/Sao_Paulo's midnight on 2018-11-04) that is the instant of
// the jump. absl::FromCivil would instead return `local` read with the old offset, which is the
// same instant when the jump starts exactly at `local` but later than the jump (inside the new
// day) when it starts before. If `local` occurs twice, the first occurrence.
absl::Time FirstInstantAtOrAfter(absl::CivilSecond local, const absl::TimeZone& tz) {
  const absl::TimeZone::TimeInfo info = tz.At(local);
  return info.kind == absl::TimeZone::TimeInfo::SKIPPED ? info.trans : info.pre;
}

// The window of the civil day or month (CivilUnit) containing t: from its local midnight to the
// next unit's local midnight.
template <typename CivilUnit>
Window CivilUnitWindow(absl::Time t, const absl::TimeZone& tz) {
  const CivilUnit unit(tz.At(t).cs);
  Window window{FirstInstantAtOrAfter(absl::CivilSecond(unit), tz),
                FirstInstantAtOrAfter(absl::CivilSecond(unit + 1), tz)};
  if (window.end <= t) {
    // t is in the second pass of a local time repeated across midnight: the next unit has
    // already begun, so t belongs to it (windows must not overlap).
    window = {window.end, FirstInstantAtOrAfter(absl::CivilSecond(unit + 2), tz)};
  }
  return window;
}

Window WindowContaining(WindowKind window, absl::Time t, const absl::TimeZone& tz) {
  // Infinite times have no civil fields; they are their own (empty) window.
  if (t == absl::InfiniteFuture() || t == absl::InfinitePast()) return {t, t};
  switch (window) {
    case WindowKind::kMinute:
      break;
    case WindowKind::kHour:
      return HourWindow(t, tz);
    case WindowKind::kDay:
      return CivilUnitWindow<absl::CivilDay>(t, tz);
    case WindowKind::kMonth:
      return CivilUnitWindow<absl::CivilMonth>(t, tz);
  }
  const absl::Time start = SubBucketStart(t);
  return {start, start + absl::Seconds(kSubBucketSeconds)};
}

}  // namespace

absl::Time SubBucketStart(absl::Time t) {
  if (t == absl::InfiniteFuture() || t == absl::InfinitePast()) return t;
  return absl::UnixEpoch() + absl::Floor(t - absl::UnixEpoch(), absl::Seconds(kSubBucketSeconds));
}

SubBucketRange SlidingMinuteBuckets(absl::Time t) {
  const absl::Time last = SubBucketStart(t);
  return {last - absl::Seconds(kSubBucketSeconds * (kSlidingMinuteBuckets - 1)), last};
}

absl::Time CalendarWindowStart(WindowKind window, absl::Time t, const absl::TimeZone& tz) {
  return WindowContaining(window, t, tz).start;
}

absl::Time CalendarWindowEnd(WindowKind window, absl::Time t, const absl::TimeZone& tz) {
  return WindowContaining(window, t, tz).end;
}

}  // namespace tokenmeter::aggregator
