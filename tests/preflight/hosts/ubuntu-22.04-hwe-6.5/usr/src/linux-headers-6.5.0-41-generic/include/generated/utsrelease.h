#define UTS_RELEASE "6.5.0-41-generic"
