#define UTS_RELEASE "6.9.3-1.el7.elrepo.x86_64"
